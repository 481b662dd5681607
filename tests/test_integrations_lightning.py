"""Lightning integration: real Trainer.fit() runs with gradient accumulation, bf16 autocast on
CPU, and a resume from a checkpoint that brings back the masks and the schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk

L = pytest.importorskip("lightning.pytorch")
from prunekit.integrations.lightning import PruningCallback  # noqa: E402

pytestmark = pytest.mark.slow


class Regressor(L.LightningModule):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, generator=g)
    y = torch.tanh(x[:, :4] * 2)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def fit(module, tmp_path, max_steps, ckpt_path=None):
    pruner = pk.Pruner(
        module, pk.PruneConfig(sparsity=0.75, schedule=pk.Cubic(start=0, end=8, every=2))
    )
    trainer = L.Trainer(
        max_steps=max_steps, accumulate_grad_batches=2, precision="bf16-mixed",
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path),
        callbacks=[PruningCallback(pruner),
                   L.callbacks.ModelCheckpoint(dirpath=str(tmp_path), every_n_train_steps=4,
                                               save_top_k=-1)],
    )  # fmt: skip
    trainer.fit(module, loader(), ckpt_path=ckpt_path)
    return pruner, trainer


def test_fit_prunes_per_optimizer_step_and_resumes(tmp_path):
    module = Regressor()
    pruner, trainer = fit(module, tmp_path, max_steps=12)
    assert trainer.global_step == 12 and pruner.state_dict()["step"] == 12
    masks = pk.MaskState(module).masks
    for t in pruner.targets:
        assert int((t.weight == 0).sum()) == round(0.75 * t.weight.numel())
        assert not t.weight[~masks[t.qualname]].any()
    ckpts = sorted(tmp_path.glob("*step=4*.ckpt"))
    assert ckpts
    saved = torch.load(ckpts[0], weights_only=True)["state_dict"]
    # resume in a fresh module from step 4: the masks come back and the schedule continues
    fresh = Regressor(seed=1)
    pruner2, trainer2 = fit(fresh, tmp_path / "resumed", max_steps=12, ckpt_path=str(ckpts[0]))
    assert trainer2.global_step == 12 and pruner2.state_dict()["step"] == 12
    for t in pruner2.targets:
        mask = pk.MaskState(fresh).masks[t.qualname]
        assert int((~mask).sum()) == round(0.75 * t.weight.numel())
        assert not t.weight[~mask].any()
        assert not (mask & (saved[t.qualname] == 0)).any()  # checkpoint zeros stay pruned
