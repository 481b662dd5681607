"""Training with masks held: distillation, fine-tuning, prune-and-recover, regularisers."""

from .distill import Distiller, distill
from .loop import History
from .recover import Recovered, finetune, prune_and_recover

__all__ = ["Distiller", "History", "Recovered", "distill", "finetune", "prune_and_recover"]
