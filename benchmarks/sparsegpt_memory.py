"""SparseGPT's peak memory while pruning, against its goal: one block plus two Hessians.

Each case runs in a fresh process (Linux only): the peak resident memory while pruning
(``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident memory just before the
call, once the model and calibration data are loaded. The libraries' fixed costs (prunekit's
modules, the BLAS/LAPACK work buffers) are paid before that point by pruning a tiny 64->16
linear, and the freed heap is handed back (``malloc_trim``), so the base is as low as it goes.

The peak is printed over the loaded model, and over the model *with its masks attached* (the
result: one bool per pruned weight, which stays after the call): the working memory of the
pruning itself. The goal is what one block needs beside the model: two Hessians of the widest
layer (its XᵀX and the factor of the inverse, float32 ``cols²`` each) plus the block, i.e. a
float32 working copy of the block's pruned weights and the block's calibration activations
(the runner holds every batch's inputs to the block and its outputs; the lone linear has no
block list and holds one batch's output at a time, its inputs being the caller's data).

Cases: a lone 4096->1024 linear (Hessian 4096² float32 = 64 MiB); a randomly initialised
GPT-2-medium-sized model (24 blocks, width 1024, 355M parameters; its widest layer, mlp.c_proj,
has 4096 inputs); the same with ``reconstruct="block"``, against the same goal (its
activations count the dense model's stream too; the stage tunes the block with Adam after the
solves, when the Hessians are gone, and holds the block's weights four more times: a copy for
the undo, the gradients and two moments).
``--src DIR`` runs another checkout's ``prunekit`` (e.g. the main branch) for a before/after.

    python benchmarks/sparsegpt_memory.py [--src /work/main/src] [--case linear|gpt2|gpt2-block]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import gc, json, sys, torch
from torch import nn
import prunekit as pk
from prunekit.masks import mask_names
torch.manual_seed(0)
torch.set_num_threads(1)
case = sys.argv[1]
pk.prune(nn.Linear(64, 16), 0.5, criterion="sparsegpt", data=[torch.randn(32, 64)])  # warm-up
MiB = 2**20
if case == "linear":
    model = nn.Linear(4096, 1024)
    data = [torch.randn(256, 4096) for _ in range(4)]
    weights = model.weight.numel() * 4
    activations = 256 * 1024 * 4  # one batch's output
    extra = {}
else:
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_layer=24, n_embd=1024, n_head=16, n_positions=256, vocab_size=50257)
    model = GPT2LMHeadModel(cfg).eval()
    data = [{"input_ids": torch.randint(0, 50257, (4, 128))} for _ in range(2)]
    block = model.transformer.h[0]
    weights = sum(m.weight.numel() * 4 for m in block.modules() if hasattr(m, "nf"))
    tokens = sum(b["input_ids"].numel() for b in data)
    activations = 2 * tokens * 1024 * 4  # every batch's inputs to the block and its outputs
    extra = {"reconstruct": "block"} if case == "gpt2-block" else {}
    if extra:  # the dense model's stream is carried too: its inputs and outputs
        activations *= 2
hessian = 4096 * 4096 * 4
def status(key):
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith(key))
gc.collect()
from prunekit.calibrate.memory import release_freed_memory
release_freed_memory()
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak
pk.prune(model, 0.5, criterion="sparsegpt", data=data, exclude=["lm_head"], **extra)
peak = status("VmHWM")
masks = sum(m.numel() * m.element_size() for mod in model.modules() for _, m in mask_names(mod))
print(json.dumps({"case": case, "extra_mib": (peak - base) / MiB, "hessian_mib": hessian / MiB,
                  "weights_mib": weights / MiB, "activations_mib": activations / MiB,
                  "masks_mib": masks / MiB}))
"""


def measure(case: str, src: str | None) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    out = subprocess.run(
        [sys.executable, "-c", CHILD, case], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=None, help="PYTHONPATH of the prunekit to measure")
    parser.add_argument("--case", choices=["linear", "gpt2", "gpt2-block"], action="append")
    args = parser.parse_args()
    print("peak resident memory while pruning, MiB; goal = 2 Hessians + block weights (float32")
    print("working copies) + block activations; 'over model+masks' counts the result's masks")
    print("(kept after the call) as part of the model")
    head = ("case", "2 Hess", "weights", "activ", "goal", "over model+masks", "masks", "over model")
    print(f"{head[0]:10} {head[1]:>6} {head[2]:>7} {head[3]:>5} {head[4]:>5} {head[5]:>16} "
          f"{head[6]:>5} {head[7]:>10}")  # fmt: skip
    for case in args.case or ["linear", "gpt2", "gpt2-block"]:
        r = measure(case, args.src)
        goal = 2 * r["hessian_mib"] + r["weights_mib"] + r["activations_mib"]
        work = r["extra_mib"] - r["masks_mib"]
        print(
            f"{case:10} {2 * r['hessian_mib']:6.0f} {r['weights_mib']:7.0f} "
            f"{r['activations_mib']:5.0f} {goal:5.0f} {work:16.0f} {r['masks_mib']:5.0f} "
            f"{r['extra_mib']:10.0f}"
        )


if __name__ == "__main__":
    main()
