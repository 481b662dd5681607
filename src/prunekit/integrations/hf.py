"""Hugging Face ``transformers.Trainer`` integration (``pip install 'prunekit[hf]'``).

* :class:`PruningCallback` steps a :class:`~prunekit.Pruner` once per optimizer step (so gradient
  accumulation counts optimizer steps), keeps its masks through Trainer's optimizer and mixed
  precision (prunekit's masks hold through any optimizer), broadcasts rank 0's masks after each
  pruning step under ``torch.distributed``, and saves the pruner's state into every checkpoint
  folder (``prunekit_pruner.safetensors``), restoring it on ``train(resume_from_checkpoint=...)``.
* :class:`DistillationTrainer` trains the pruned model against a dense teacher with
  :class:`~prunekit.train.distill.Distiller`'s loss (logits KL or hidden MSE, mixed with the task
  loss when the batch has labels).

Usage::

    pruner = pk.Pruner(model, pk.PruneConfig(sparsity=0.5, schedule=pk.Cubic(0, 500, every=50)))
    trainer = DistillationTrainer(model=model, teacher=dense, args=args, train_dataset=ds,
                                  callbacks=[PruningCallback(pruner)])
    trainer.train()
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ..pruner import Pruner
from ..train.checkpoint import PRUNER_FILE, load_pruner, save_pruner
from ..train.distill import Distiller
from ..train.distributed import broadcast_masks

try:
    from transformers import Trainer, TrainerCallback
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "prunekit.integrations.hf needs transformers: pip install 'prunekit[hf]'"
    ) from None


def checkpoint_dir(args: Any, state: Any) -> str:
    """The folder Trainer writes the checkpoint of ``state.global_step`` to (and resumes from,
    unless ``args.resume_from_checkpoint`` names another)."""
    return os.path.join(args.output_dir, f"checkpoint-{state.global_step}")


class PruningCallback(TrainerCallback):
    """Steps ``pruner`` after every optimizer step of a ``transformers.Trainer``.

    The pruner must wrap the model the Trainer trains. Its state is saved with each checkpoint
    and restored when training resumes from one.
    """

    def __init__(self, pruner: Pruner) -> None:
        if not isinstance(pruner, Pruner):
            raise ConfigError(
                f"PruningCallback needs a prunekit Pruner, got {type(pruner).__name__}"
            )
        self.pruner = pruner

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            return
        folder = args.resume_from_checkpoint
        if not isinstance(folder, str) or not os.path.isdir(folder):
            folder = checkpoint_dir(args, state)
        path = os.path.join(folder, PRUNER_FILE)
        if not os.path.isfile(path):
            warnings.warn(
                f"resuming at step {state.global_step} without {PRUNER_FILE} in the checkpoint: "
                "the pruner starts from its own state (masks may be lost)",
                stacklevel=2,
            )
            return
        load_pruner(self.pruner, path)

    def on_step_end(self, args, state, control, **kwargs):
        applied = self.pruner.step()
        if applied is not None and applied > 0:
            broadcast_masks(self.pruner.model)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            save_pruner(self.pruner, os.path.join(checkpoint_dir(args, state), PRUNER_FILE))


class DistillationTrainer(Trainer):
    """A ``Trainer`` whose loss is distillation from ``teacher`` (see :class:`Distiller`).

    ``teacher`` is moved to the training device and kept in eval mode without gradients.
    ``hidden_layers`` adds MSE on named intermediate modules; where a shrunk student's widths
    differ, pass ``example_inputs`` (one batch) so that the projections exist before the optimizer
    is created (they are trained with it).
    """

    def __init__(
        self,
        *args: Any,
        teacher: Any,
        temperature: float = 2.0,
        alpha: float = 0.5,
        hidden_layers: Sequence[str] | Mapping[str, str] | None = None,
        hidden_weight: float = 1.0,
        example_inputs: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()
        self.distiller = Distiller(
            self.model,
            self.teacher,
            temperature=temperature,
            alpha=alpha,
            hidden_layers=hidden_layers,
            hidden_weight=hidden_weight,
        )
        if example_inputs is not None:
            self.distiller.prepare(example_inputs)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        extra = list(self.distiller.projections.parameters())
        if extra:
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, _, outputs = self.distiller.compute(dict(inputs), student=model)
        return (loss, outputs) if return_outputs else loss
