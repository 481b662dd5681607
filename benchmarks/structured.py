"""Structured pruning, before and after, against Torch-Pruning in the same run.

For an HF ResNet-50-sized classifier, a BERT-base-sized encoder and a Llama-style LM (hidden 512,
4 layers, 8 query / 2 KV heads) it prints parameters, MACs (attention matmuls included, counted with
``torch.utils.flop_counter``), CPU latency at batch 1 and 8 (median of interleaved runs) and
pruning time, for the dense model, prunekit and Torch-Pruning at the same ratios.

prunekit prunes 50% of every channel group (and, for the transformers, 50% of the heads) and
returns a verified, physically smaller model. Torch-Pruning runs with its documented settings
(``GroupMagnitudeImportance``, ``num_heads`` for attention, the head-count attributes patched by
hand afterwards, as its examples do). Torch-Pruning is installed only in a separate benchmark
environment::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -c constraints.txt torch==2.13.0 transformers torch-pruning
    .venv-bench/bin/pip install -c constraints.txt -e .
    .venv-bench/bin/python benchmarks/structured.py            # ~5-10 min on 2 cores
    .venv-bench/bin/python benchmarks/structured.py --quick    # tiny configs, a smoke test
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import prunekit as pk
from prunekit.structure.graph import call_model


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], Any]  # batch size -> example inputs
    #: what prunekit prunes, one after the other, each at the ratio
    granularities: tuple[str, ...] = ("channel",)
    #: Torch-Pruning may prune the LayerNorm'd hidden width too
    width: bool = False

    @property
    def attention(self) -> bool:
        return "head" in self.granularities


def _resnet(quick: bool) -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    if quick:
        cfg = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 96, 128], depths=[1, 1, 1, 1])
    else:
        cfg = ResNetConfig()  # ResNet-50: depths 3-4-6-3, widths 256-512-1024-2048
    return ResNetForImageClassification(cfg)


def _bert(quick: bool, classifier: bool = False) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    cfg = (
        BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256
        )
        if quick
        else BertConfig()
    )
    # a classifier's output is its logits, so the hidden width is prunable; BertModel returns it
    return BertForSequenceClassification(cfg) if classifier else BertModel(cfg)


def _llama(quick: bool, layers: int = 4) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden = (2, 64) if quick else (layers, 512)
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg)


def cases(quick: bool) -> list[Case]:
    size, seq = (64, 32) if quick else (224, 128)

    def image(b: int) -> torch.Tensor:
        return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(0))

    def ids(b: int, **extra: Any) -> dict:
        g = torch.Generator().manual_seed(0)
        return {"input_ids": torch.randint(0, 1000, (b, seq), generator=g), **extra}

    tag = " (quick)" if quick else ""
    return [
        Case("ResNet-50" + tag, lambda: _resnet(quick), image),
        Case("BERT-base" + tag, lambda: _bert(quick), ids, ("channel", "head")),
        Case(
            "BERT-base width" + tag,
            lambda: _bert(quick, classifier=True),
            ids,
            ("channel", "head"),
            width=True,
        ),
        Case(
            "Llama h512 L4 8q/2kv" + tag,
            lambda: _llama(quick),
            lambda b: ids(b, use_cache=False),
            ("channel", "head"),
        ),
        Case(
            "Llama h512 L8 depth" + tag,
            lambda: _llama(quick, layers=8),
            lambda b: ids(b, use_cache=False),
            ("layer",),
        ),
    ]


# -- the two pruners ---------------------------------------------------------------------------
def prune_prunekit(model: nn.Module, x: Any, ratio: float, case: Case) -> nn.Module:
    t = time.perf_counter()
    for granularity in case.granularities:
        pk.prune(model, ratio, granularity=granularity, example_inputs=x)
    _split["mask"] = time.perf_counter() - t
    return pk.shrink(model, x)  # includes the verification forward against the masked model


_split: dict[str, float] = {}


def _tp_attention(model: nn.Module) -> dict[nn.Module, int]:
    heads = {}
    for m in model.modules():
        if hasattr(m, "q_proj") and hasattr(m, "num_key_value_groups"):  # Llama
            kv = m.k_proj.out_features // m.head_dim
            heads[m.q_proj] = m.q_proj.out_features // m.head_dim
            heads[m.k_proj] = heads[m.v_proj] = kv
        elif hasattr(m, "query") and hasattr(m, "attention_head_size"):  # BERT
            for lin in (m.query, m.key, m.value):
                heads[lin] = m.num_attention_heads
    return heads


def _tp_patch(model: nn.Module) -> None:
    """The hand-patching Torch-Pruning's examples apply after pruning transformers."""
    for m in model.modules():
        if hasattr(m, "q_proj") and hasattr(m, "num_key_value_groups"):
            q, kv = m.q_proj.out_features // m.head_dim, m.k_proj.out_features // m.head_dim
            m.num_key_value_groups = q // kv
        elif hasattr(m, "query") and hasattr(m, "attention_head_size"):
            m.num_attention_heads = m.query.out_features // m.attention_head_size
            m.all_head_size = m.query.out_features


def prune_torch_pruning(model: nn.Module, x: Any, ratio: float, case: Case) -> nn.Module:
    import torch_pruning as tp

    if "layer" in case.granularities:
        raise NotImplementedError("Torch-Pruning removes no whole blocks")
    attention = case.attention
    ignored = [
        m
        for n, m in model.named_modules()
        if n.endswith(("classifier.1", "lm_head", "pooler.dense"))
    ]
    if not case.width and any(isinstance(m, nn.LayerNorm) for m in model.modules()):
        # keep the LayerNorm'd hidden width, as prunekit does (its removal is not exact; TP's
        # default prunes it anyway, and crashes on BERT under transformers 5)
        ignored += [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.LayerNorm))]
    heads = _tp_attention(model) if attention else {}
    pruner = tp.pruner.BasePruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        num_heads=heads,
        prune_num_heads=bool(heads),
        prune_head_dims=False,
        head_pruning_ratio=ratio if heads else 0.0,
        forward_fn=lambda m, inp: call_model(m, inp),
        output_transform=lambda out: _first_tensor(out),
    )
    pruner.step()
    _tp_patch(model)
    return model


def _first_tensor(out: Any) -> torch.Tensor:
    for v in out.values() if isinstance(out, dict) else out if isinstance(out, tuple) else [out]:
        if isinstance(v, torch.Tensor):
            return v.float().sum()
    raise TypeError("no tensor output")


# -- measurements ------------------------------------------------------------------------------
def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, x: Any) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call_model(model, x)
    return counter.get_total_flops() / 2


@dataclass
class Row:
    method: str
    model: nn.Module | None
    prune_s: float = 0.0
    status: str = "ok"
    params: int = 0
    macs: float = 0.0
    lat: dict[int, list[float]] = field(default_factory=lambda: {1: [], 8: []})


def latency(rows: list[Row], inputs: Callable[[int], Any], rounds: int) -> None:
    xs = {b: inputs(b) for b in (1, 8)}
    live = [r for r in rows if r.model is not None]
    with torch.no_grad():
        for r in live:  # warm-up
            for b in (1, 8):
                call_model(r.model, xs[b])
        for _ in range(rounds):
            for b in (1, 8):
                for r in live:
                    t = time.perf_counter()
                    call_model(r.model, xs[b])
                    r.lat[b].append(time.perf_counter() - t)


def run_case(case: Case, ratio: float, rounds: int) -> list[Row]:
    torch.manual_seed(0)
    dense = case.build().eval()
    x1 = case.inputs(1)
    with torch.no_grad():  # warm up, so neither pruner pays for the first forward
        call_model(dense, x1)
    rows = [Row("dense", dense)]
    for method, fn in (("prunekit", prune_prunekit), ("Torch-Pruning", prune_torch_pruning)):
        model = copy.deepcopy(dense)
        t = time.perf_counter()
        try:
            small = fn(model, x1, ratio, case).eval()
            with torch.no_grad():
                call_model(small, case.inputs(8))  # must run at another batch size too
            rows.append(Row(method, small, time.perf_counter() - t))
            if method == "prunekit":
                rows[-1].status = (
                    f"ok (mask {_split['mask']:.1f}s + shrink/verify "
                    f"{rows[-1].prune_s - _split['mask']:.1f}s)"
                )
        except Exception as e:  # a peer's failure is a result, not a crash of the benchmark
            traceback.print_exc()
            rows.append(Row(method, None, time.perf_counter() - t, f"fails: {type(e).__name__}"))
    for r in rows:
        if r.model is not None:
            r.params, r.macs = params(r.model), macs(r.model, x1)
    latency(rows, case.inputs, rounds)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny configs (smoke test)")
    parser.add_argument("--only", nargs="*", help="case name prefixes to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = Table(
        title=f"structured pruning at ratio {args.ratio} ({args.threads} threads, "
        f"median of {args.rounds} interleaved runs)"
    )
    for col in (
        "model",
        "method",
        "params",
        "MACs",
        "lat b1",
        "lat b8",
        "lat/MACs b8",
        "prune s",
        "notes",
    ):
        table.add_column(col, justify="left" if col in ("model", "method", "status") else "right")
    for case in cases(args.quick):
        if args.only and not any(case.name.startswith(o) for o in args.only):
            continue
        rows = run_case(case, args.ratio, args.rounds)
        base = rows[0]
        med = {
            id(r): {b: statistics.median(r.lat[b]) if r.lat[b] else None for b in (1, 8)}
            for r in rows
        }
        for r in rows:
            if r.model is None:
                table.add_row(
                    case.name, r.method, "-", "-", "-", "-", "-", f"{r.prune_s:.1f}", r.status
                )
                continue
            m, b = med[id(r)], med[id(base)]
            mac_ratio = r.macs / base.macs
            lat8 = m[8] / b[8]
            table.add_row(
                case.name,
                r.method,
                f"{r.params / 1e6:.2f}M ({r.params / base.params:.2f})",
                f"{r.macs / 1e9:.2f}G ({mac_ratio:.2f})",
                f"{m[1] * 1e3:.1f}ms ({m[1] / b[1]:.2f})",
                f"{m[8] * 1e3:.1f}ms ({lat8:.2f})",
                f"{lat8 / mac_ratio:.2f}",
                f"{r.prune_s:.1f}" if r.method != "dense" else "-",
                r.status,
            )
        table.add_section()
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
