"""Structured pruning, before and after, against Torch-Pruning at equal MACs.

For a ResNet-50 (plain torch), a BERT-base encoder (inner widths + heads), a BERT-base classifier
(hidden width + heads), a Llama-style LM (hidden 512, 8 query / 2 KV heads; widths + heads) and
an 8-block Llama (depth) it prints parameters, MACs (attention matmuls included, counted with
``torch.utils.flop_counter``), latency at batch 1 and 8 and pruning time, for the dense model,
prunekit and Torch-Pruning.

prunekit prunes ``--ratio`` of every channel group (then of the heads, or of the blocks) and
returns a verified, physically smaller model; its prune time is mask + shrink + verification.
Torch-Pruning runs in its own environment, as a subprocess (``--tp-python``), with its documented
settings (``GroupMagnitudeImportance``, ``num_heads`` for attention, the head-count attributes
patched by hand afterwards, as its examples do); its pruning ratio is bisected (untimed) until its
MACs match prunekit's, then it prunes a fresh copy, timed. Each process times its pruned model
against its own dense copy (interleaved rounds), so every ratio is measured within one process.
Times are this thread's CPU time at one thread (``time.thread_time``: it resists the load of
other processes); prune times are the range over ``--repeat`` fresh copies, each pruner having
pruned once untimed before (Torch-Pruning's ratio search; one prunekit prune), so neither pays
its imports and first calls in them. Every model, dense, prunekit's and Torch-Pruning's, is timed
as deployed, after ``prunekit.optimize_for_inference`` (``--optimize``, by default
``fold+channels-last``: BatchNorm folded into the conv before it, conv weights channels-last,
checked against the plain model; Torch-Pruning's worker imports it from ``src/``), and the plain
models in the same rounds (the "plain" column)::

    python3 -m venv /work/tpvenv
    /work/tpvenv/bin/pip install -c constraints.txt torch==2.13.0 transformers torch-pruning
    PYTHONPATH=src python benchmarks/structured.py --tp-python /work/tpvenv/bin/python
    PYTHONPATH=src python benchmarks/structured.py --quick    # tiny configs, a smoke test
    PYTHONPATH=src python benchmarks/structured.py --only ResNet-50 --channels-last  # NHWC
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# this file also runs as Torch-Pruning's worker, in an environment without prunekit: prunekit
# and rich are imported where they are used

clock = time.thread_time  # at one thread, the work runs on this thread


def call_model(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


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


class Bottleneck(nn.Module):
    """ResNet-50's bottleneck block (1x1, 3x3, 1x1 convolutions, projection shortcut)."""

    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = mid * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


def resnet(quick: bool) -> nn.Module:
    """ResNet-50 (depths 3-4-6-3, 25.6M parameters) in plain torch; ``quick``: 1-1-1-1, narrow."""
    depths, width = ((1, 1, 1, 1), 16) if quick else ((3, 4, 6, 3), 64)
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 7, 2, 3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = width
    for stage, depth in enumerate(depths):
        mid = width * 2**stage
        for i in range(depth):
            layers.append(Bottleneck(cin, mid, 2 if i == 0 and stage else 1))
            cin = mid * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


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


def cases(quick: bool, channels_last: bool = False) -> list[Case]:
    size, seq = (64, 32) if quick else (224, 128)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def image(b: int) -> torch.Tensor:
        x = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(0))
        return x.contiguous(memory_format=fmt)

    def ids(b: int, **extra: Any) -> dict:
        g = torch.Generator().manual_seed(0)
        return {"input_ids": torch.randint(0, 1000, (b, seq), generator=g), **extra}

    tag = " (quick)" if quick else ""
    return [
        Case(
            "ResNet-50" + tag + " channels-last" * channels_last,
            lambda: resnet(quick).to(memory_format=fmt),
            image,
        ),
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
            width=True,  # its output is the logits: prunekit prunes the hidden width too
        ),
        Case(
            "Llama h512 L8 depth" + tag,
            lambda: _llama(quick, layers=8),
            lambda b: ids(b, use_cache=False),
            ("layer",),
        ),
    ]


# -- the two pruners ---------------------------------------------------------------------------
def prune_prunekit(model: nn.Module, x: Any, ratio: float, case: Case) -> tuple[nn.Module, dict]:
    """Mask each granularity in turn, then shrink (which verifies against the masked model)."""
    import prunekit as pk

    t0 = clock()
    for granularity in case.granularities:
        pk.prune(model, ratio, granularity=granularity, example_inputs=x)
    t1 = clock()
    small = pk.shrink(model, x)
    return small, {"mask": t1 - t0, "shrink": clock() - t1}


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
    """Torch-Pruning's documented recipe; blocks (which it cannot remove) become width + heads."""
    import torch_pruning as tp

    transformer = any(isinstance(m, (nn.LayerNorm, nn.Embedding)) for m in model.modules())
    ignored = [
        m
        for n, m in model.named_modules()
        if n.endswith(("classifier", "classifier.1", "lm_head", "pooler.dense"))
        or (not transformer and isinstance(m, nn.Linear))  # the CNN's 1000 logits
    ]
    if transformer and not case.width and "layer" not in case.granularities:
        # keep the LayerNorm'd hidden width, as prunekit does for a model that returns it
        ignored += [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.LayerNorm))]
    heads = _tp_attention(model) if transformer else {}
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


def _cpu_attention_flops(q: list[int], k: list[int], v: list[int], *_, **__) -> int:
    """FLOPs of ``softmax(q kᵀ) v`` for (batch, heads, tokens, width) shapes; k and v may have
    fewer heads (GQA), every query head still reads them all."""
    *lead, tokens, width = q
    return 2 * math.prod(lead) * tokens * k[-2] * (width + v[-1])


#: torch's counter has no formula for the CPU kernel of scaled_dot_product_attention (it counts
#: 0 there), so the attention matmuls get theirs
_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def macs(model: nn.Module, x: Any) -> float:
    """Multiply-accumulates of one call: every matmul, attention's included."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_FORMULAS) as counter:
        call_model(model, x)
    return counter.get_total_flops() / 2


def latency(models: list[nn.Module], inputs: Callable[[int], Any], rounds: int) -> list[dict]:
    """Median seconds per call of each model at batch 1 and 8, in interleaved rounds."""
    xs = {b: inputs(b) for b in (1, 8)}
    times: list[dict[int, list[float]]] = [{1: [], 8: []} for _ in models]
    with torch.no_grad():
        for m in models:  # warm-up
            for b in (1, 8):
                call_model(m, xs[b])
        for r in range(rounds):
            for b in (1, 8):
                for i in range(len(models)):
                    j = (i + r) % len(models)  # rotate the order every round
                    t = clock()
                    call_model(models[j], xs[b])
                    times[j][b].append(clock() - t)
    return [{b: statistics.median(t[b]) for b in (1, 8)} for t in times]


#: --optimize choices: what prunekit.optimize_for_inference is asked for
OPTIMIZE = {"none": None, "fold": False, "fold+channels-last": True}


def optimized(model: nn.Module, x: Any, how: str) -> tuple[nn.Module, Any]:
    """``model`` as deployed: ``prunekit.optimize_for_inference`` (BatchNorm folded into the conv
    before it, with ``how="fold+channels-last"`` 4-D weights in channels-last; checked against
    ``model``). Torch-Pruning's worker imports it from this checkout's src/."""
    from prunekit.runtime.fuse import inference_report, optimize_for_inference

    fast = optimize_for_inference(model, x, channels_last=OPTIMIZE[how])
    return fast, inference_report(fast)


@dataclass
class Row:
    method: str
    params: float = 0.0  # ratio to dense
    macs: float = 0.0  # ratio to dense
    lat: dict[int, float] = field(default_factory=dict)  # ratio to dense, by batch
    prune_s: list[float] = field(default_factory=list)
    notes: str = ""
    #: with --optimize: the ratios of the models as pruned (not optimised), same rounds
    lat_plain: dict[int, float] = field(default_factory=dict)
    #: with --optimize: "folded dense/pruned BatchNorms, max relative error"
    optimized: str = ""


def measure(
    dense: nn.Module, prune: Callable[[nn.Module], tuple[nn.Module, dict]], case: Case, args
) -> tuple[Row, dict]:
    """Prune ``--repeat`` fresh copies (timed), then measure the last one against ``dense``.

    With ``--optimize`` both are timed as deployed too (:func:`optimized`), in the same
    interleaved rounds as the plain pair, which gives ``Row.lat`` (``Row.lat_plain``: plain)."""
    x1 = case.inputs(1)
    times, split, small = [], {}, None
    for _ in range(args.repeat):
        model = copy.deepcopy(dense)
        t = clock()
        small, split = prune(model)
        times.append(clock() - t)
        small.eval()
        with torch.no_grad():
            call_model(small, case.inputs(8))  # must run at another batch size too
    models, note = [dense, small], ""
    if args.optimize != "none":
        fd, rd = optimized(dense, x1, args.optimize)
        fs, rs = optimized(small, x1, args.optimize)
        conv2d = any(isinstance(m, nn.Conv2d) for m in dense.modules())
        if rd.folded or rs.folded or (rd.channels_last and conv2d):  # else: the plain pair
            models += [fd, fs]
            note = (
                f"{len(rd.folded)}/{len(rs.folded)} BN folded"
                + ", channels-last" * rd.channels_last
                + f", err {max(rd.max_rel_error, rs.max_rel_error):.0e}"
            )
    lats = latency(models, case.inputs, args.rounds)
    ld, ls = lats[-2:]
    row = Row(
        "",
        params(small) / params(dense),
        macs(small, x1) / macs(dense, x1),
        {b: ls[b] / ld[b] for b in (1, 8)},
        times,
        lat_plain={b: lats[1][b] / lats[0][b] for b in (1, 8)} if len(lats) == 4 else {},
        optimized=note,
    )
    return row, {"dense_lat": ld, **split}


def tp_worker(args) -> None:
    """Torch-Pruning's side, in its own environment: bisect its ratio to prunekit's MACs, then
    prune and measure; prints one JSON line."""
    torch.set_num_threads(1)
    case = next(c for c in cases(args.quick, args.channels_last) if c.name == args.tp_worker)
    torch.manual_seed(0)
    dense = case.build().eval()
    x1 = case.inputs(1)
    with torch.no_grad():
        call_model(dense, x1)
    base = macs(dense, x1)
    lo, hi, ratio = 0.0, 0.95, args.ratio
    for _ in range(args.bisect):  # untimed: find the ratio whose MACs match prunekit's
        got = macs(prune_torch_pruning(copy.deepcopy(dense), x1, ratio, case), x1) / base
        lo, hi = (ratio, hi) if got > args.target_macs else (lo, ratio)
        ratio = (lo + hi) / 2
    row, _ = measure(dense, lambda m: (prune_torch_pruning(m, x1, ratio, case), {}), case, args)
    print(json.dumps({"row": row.__dict__, "ratio": ratio}))


def run_tp(case: Case, target_macs: float, args) -> Row:
    cmd = [args.tp_python, __file__, "--tp-worker", case.name, "--target-macs", str(target_macs)]
    for flag in ("ratio", "rounds", "repeat", "bisect"):
        cmd += [f"--{flag}", str(getattr(args, flag))]
    cmd += ["--quick"] * args.quick + ["--channels-last"] * args.channels_last
    cmd += ["--optimize", args.optimize]
    env = os.environ
    if (
        args.optimize != "none"
    ):  # the worker imports prunekit.runtime.fuse (only) from this checkout
        src = str(Path(__file__).resolve().parents[1] / "src")
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(proc.stderr[-3000:], file=sys.stderr)
        return Row("Torch-Pruning", notes=f"fails: {last[:70]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    lat = {k: {int(b): v for b, v in out["row"][k].items()} for k in ("lat", "lat_plain")}
    row = Row(**{**out["row"], **lat})
    row.method = "Torch-Pruning"
    row.notes = f"ratio {out['ratio']:.3f}" + (
        " (width+heads: no block removal)" if "layer" in case.granularities else ""
    )
    return row


def run_case(case: Case, args) -> tuple[list[Row], dict]:
    torch.manual_seed(0)
    dense = case.build().eval()
    x1 = case.inputs(1)
    with torch.no_grad():  # warm up, so no pruner pays for the first forward
        call_model(dense, x1)
    info = {"params": params(dense), "macs": macs(dense, x1)}
    try:
        # one untimed prune, as Torch-Pruning's ratio search is: imports and first calls
        prune_prunekit(copy.deepcopy(dense), x1, args.ratio, case)
        row, split = measure(dense, lambda m: prune_prunekit(m, x1, args.ratio, case), case, args)
        row.method = "prunekit"
        row.notes = f"last: mask {split['mask']:.2f}s + shrink/verify {split['shrink']:.2f}s"
        info["lat"] = split["dense_lat"]
    except Exception as e:  # a failure is a result, not a crash of the benchmark
        traceback.print_exc()
        return [Row("prunekit", notes=f"fails: {type(e).__name__}")], info
    rows = [row]
    if args.tp_python:
        rows.append(run_tp(case, row.macs, args))
    return rows, info


def _pair(lat: dict[int, float]) -> str:
    return f"{lat[1]:.2f}/{lat[8]:.2f}"


def _span(xs: list[float]) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f}" if xs else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="timed prunes of fresh copies")
    parser.add_argument("--bisect", type=int, default=6, help="Torch-Pruning ratio search steps")
    parser.add_argument("--tp-python", help="python of an environment with torch-pruning")
    parser.add_argument("--quick", action="store_true", help="tiny configs (smoke test)")
    parser.add_argument("--only", nargs="*", help="case names (or name prefixes) to run")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="CNN weights and images in channels-last memory format (every method and dense)",
    )
    parser.add_argument(
        "--optimize",
        choices=sorted(OPTIMIZE),
        default="fold+channels-last",
        help="time every model (dense, prunekit, Torch-Pruning) as deployed, after "
        "prunekit.optimize_for_inference (BatchNorm folded into the conv before it; 4-D weights "
        "channels-last, inputs as they are); the plain models are timed in the same rounds "
        "(default: fold+channels-last)",
    )
    parser.add_argument("--tp-worker", help=argparse.SUPPRESS)
    parser.add_argument("--target-macs", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tp_worker:
        tp_worker(args)
        return
    from rich.console import Console
    from rich.table import Table

    torch.set_num_threads(1)
    title = (
        f"structured pruning at ratio {args.ratio}, Torch-Pruning at equal MACs (1 thread, "
        f"thread CPU time, median of {args.rounds} interleaved rounds; prune s: range of "
        f"{args.repeat}); lat: latency ratio to dense at batch 1 / 8"
    )
    optimize = args.optimize != "none"
    if optimize:
        title += (
            ". Every model (dense, prunekit, Torch-Pruning) is timed as deployed: "
            f"prunekit.optimize_for_inference ({args.optimize}: BatchNorms folded into the conv "
            "before them, checked against the plain model); 'plain b1/b8': the same models "
            "not optimised, timed in the same rounds"
        )
    table = Table(title=title)
    cols = ("model", "method", "params", "MACs", "lat b1", "lat b8", "lat/MACs b1", "lat/MACs b8")
    cols += ("plain b1/b8",) * optimize + ("prune s",)
    for col in (*cols, "notes"):
        table.add_column(col, justify="left" if col in ("model", "method", "notes") else "right")
    every = cases(args.quick, args.channels_last)
    names = {c.name for c in every}
    for case in every:
        # a name picks its case; otherwise a prefix picks every case it starts
        if args.only and not any(
            case.name == o or (o not in names and case.name.startswith(o)) for o in args.only
        ):
            continue
        rows, info = run_case(case, args)
        for r in rows:  # as each case ends: a long run shows its progress
            print(case.name, r, flush=True)
        lat = info.get("lat", {1: float("nan"), 8: float("nan")})
        table.add_row(
            case.name,
            "dense",
            f"{info['params'] / 1e6:.2f}M",
            f"{info['macs'] / 1e9:.2f}G",
            f"{lat[1] * 1e3:.1f}ms",
            f"{lat[8] * 1e3:.1f}ms",
            *[""] * (len(cols) - 5),
        )
        for r in rows:
            if not r.lat:
                table.add_row(
                    case.name, r.method, *["-"] * (len(cols) - 3), _span(r.prune_s), r.notes
                )
                continue
            unfolded = [_pair(r.lat_plain) if r.lat_plain else "no change"] * optimize
            notes = "; ".join(filter(None, [r.notes, r.optimized]))
            table.add_row(
                case.name,
                r.method,
                f"{r.params:.3f}",
                f"{r.macs:.3f}",
                f"{r.lat[1]:.2f}",
                f"{r.lat[8]:.2f}",
                f"{r.lat[1] / r.macs:.2f}",
                f"{r.lat[8] / r.macs:.2f}",
                *unfolded,
                _span(r.prune_s),
                notes,
            )
        table.add_section()
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
