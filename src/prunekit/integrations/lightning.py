"""Lightning integration (``pip install lightning``): a callback that prunes while training.

:class:`PruningCallback` steps a :class:`~prunekit.Pruner` once per optimizer step (Lightning's
``global_step``, so gradient accumulation counts optimizer steps), keeps its masks through any
optimizer, precision plugin and strategy (DDP: rank 0's masks are broadcast after each pruning
step), and stores the pruner's state in Lightning checkpoints, so ``fit(ckpt_path=...)`` resumes
with the masks and the schedule where they were::

    pruner = pk.Pruner(module, pk.PruneConfig(sparsity=0.8, schedule=pk.Cubic(0, 300, every=30)))
    lightning.Trainer(callbacks=[PruningCallback(pruner)]).fit(module, loader)
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..pruner import Pruner
from ..train.distributed import broadcast_masks

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "prunekit.integrations.lightning needs lightning: pip install lightning"
    ) from None


class PruningCallback(Callback):
    """Steps ``pruner`` after every optimizer step of a Lightning ``Trainer``."""

    def __init__(self, pruner: Pruner) -> None:
        if not isinstance(pruner, Pruner):
            raise ConfigError(
                f"PruningCallback needs a prunekit Pruner, got {type(pruner).__name__}"
            )
        self.pruner = pruner
        #: the trainer's global step when the pruner last stepped
        self.seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        while self.seen < trainer.global_step:
            self.seen += 1
            applied = self.pruner.step()
            if applied is not None and applied > 0:
                broadcast_masks(self.pruner.model)

    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict(), "seen": self.seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state_dict["pruner"])
        self.seen = int(state_dict["seen"])
