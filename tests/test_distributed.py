"""Masks under torch.distributed: two gloo processes on CPU, each with its own data.

* gradual magnitude pruning inside a DDP training loop: masks and weights equal on both ranks;
* prune_and_recover (distill and finetune) trains under DDP by itself: gradients averaged, so
  masks and weights stay equal;
* one-shot Wanda calibrated on different data per rank: the statistics are all-reduced, so the
  masks agree without any broadcast;
* FSDP2 (fully_shard) after pruning, masks sharded with shard_masks: the shards train with their
  zeros held, and the gathered weights agree;
* ranks that decided differently (random scores seeded per rank) agree after ``broadcast_masks``;
* ``transformers.Trainer`` under ``torchrun --nproc_per_node 2`` with the PruningCallback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

import prunekit as pk
from prunekit.train import prune_and_recover
from prunekit.train.distributed import broadcast_masks, shard_masks

pytestmark = pytest.mark.slow
WORLD = 2


def _mlp() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    return nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )


def _dump(model: nn.Module, out: Path, rank: int) -> None:
    state = {f"mask:{k}": v.to(torch.uint8) for k, v in pk.MaskState(model).masks.items()}
    state.update({f"weight:{k}": v.detach().clone() for k, v in model.state_dict().items()})
    save_file(state, str(out / f"rank{rank}.safetensors"))


def _worker(rank: int, case: str, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{out / 'store'}", rank=rank, world_size=WORLD
    )
    try:
        model = _mlp()
        g = torch.Generator().manual_seed(100 + rank)  # different data on every rank
        if case == "ddp-gradual":
            ddp = nn.parallel.DistributedDataParallel(model)
            pruner = pk.Pruner(
                model,
                pk.PruneConfig(sparsity=0.8, scope="global", schedule=pk.Cubic(0, 10, every=2)),
            )
            opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
            for _ in range(14):
                x = torch.randn(16, 16, generator=g)
                loss = (ddp(x) - x[:, :4]).square().mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
                if pruner.step():
                    broadcast_masks(model)
        elif case.startswith("recover-"):  # prune_and_recover trains under DDP by itself
            batches = [torch.randn(16, 16, generator=g) for _ in range(4)]
            history = prune_and_recover(
                model,
                pk.PruneConfig(sparsity=0.8, scope="global"),
                batches,
                recover_steps=3,
                prune_steps=2,
                method=case.removeprefix("recover-"),
                loss_fn=lambda out, x: (out - x[:, :4]).square().mean(),
                lr=1e-2,
                finalize=False,
            ).history
            assert history.steps == 6
        elif case == "fsdp2":  # prune the full model, shard it, train the shards
            from torch.distributed.fsdp import fully_shard

            pk.prune(model, 0.5)
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            assert shard_masks(model) == 3
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            for _ in range(4):
                x = torch.randn(16, 16, generator=g)
                (model(x) - x[:, :4]).square().mean().backward()
                opt.step()
                opt.zero_grad()
            state = {f"mask:{k}": v.full_tensor().to(torch.uint8)
                     for k, v in pk.MaskState(model).masks.items()}  # fmt: skip
            state.update({f"weight:{k}": v.full_tensor() for k, v in model.state_dict().items()})
            save_file(state, str(out / f"rank{rank}.safetensors"))
            return
        elif case == "wanda-oneshot":
            data = [torch.randn(32, 16, generator=g) * (1 + 3 * rank) for _ in range(2)]
            pk.prune(model, 0.5, criterion="wanda", data=data)
        elif case == "broadcast":
            pk.prune(model, 0.5, criterion="random", seed=rank)
            _dump(model, out, rank + 10)  # before: the ranks disagree
            broadcast_masks(model)
        _dump(model, out, rank)
    finally:
        dist.destroy_process_group()


def _run(case: str, tmp_path: Path) -> list[dict[str, torch.Tensor]]:
    mp.start_processes(_worker, args=(case, tmp_path), nprocs=WORLD, start_method="spawn")
    return [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]


def masks_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("mask:"): v.bool() for k, v in state.items() if k.startswith("mask:")}


def _assert_equal(states: list[dict[str, torch.Tensor]]) -> None:
    assert states[0].keys() == states[1].keys()
    assert any(k.startswith("mask:") for k in states[0])
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


@pytest.mark.parametrize(
    "case", ["ddp-gradual", "wanda-oneshot", "recover-distill", "recover-finetune", "fsdp2"]
)
def test_masks_and_weights_agree_across_ranks(case, tmp_path):
    """Each rank trains on its own data: equal weights need averaged gradients."""
    states = _run(case, tmp_path)
    _assert_equal(states)
    masks = [v for k, v in states[0].items() if k.startswith("mask:")]
    sparsity = 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    assert sparsity == pytest.approx(0.5 if case in ("wanda-oneshot", "fsdp2") else 0.8, abs=1e-3)
    for k, mask in masks_of(states[0]).items():  # pruned weights are exactly zero
        assert not states[0][f"weight:{k}"][~mask].any(), k
    if case != "wanda-oneshot":  # the ranks trained: weights moved from the shared start
        start = _mlp().state_dict()
        assert not torch.equal(states[0]["weight:2.bias"], start["2.bias"])


def test_broadcast_makes_rank_zeros_decision_everyones(tmp_path):
    states = _run("broadcast", tmp_path)
    before = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (10, 11)]
    assert not torch.equal(before[0]["mask:0.weight"], before[1]["mask:0.weight"])
    _assert_equal(states)
    for k in states[0]:
        assert torch.equal(states[0][k], before[0][k]), k  # rank 0's masks and weights won


def test_hf_trainer_under_torchrun(tmp_path):
    pytest.importorskip("transformers")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed next to this Python")
    script = Path(__file__).with_name("dist_hf_trainer.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", str(WORLD), str(script),
         str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]
    _assert_equal(states)
    masks = [v for k, v in states[0].items() if k.startswith("mask:")]
    sparsity = 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    assert sparsity == pytest.approx(0.5, abs=1e-3)
