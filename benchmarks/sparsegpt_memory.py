"""SparseGPT's peak memory over the loaded model, and its masks' independence of the thread count.

Each case runs in a fresh process: the peak resident memory while pruning (``VmHWM``, reset
through ``/proc/self/clear_refs`` once the model and calibration data are loaded) minus the
resident memory at that point (Linux only). Cases: a lone 4096->1024
linear (its Hessian is 4096² float32 = 64 MiB) and a randomly initialised GPT-2-medium-sized model
(24 blocks, width 1024, 355M parameters). The target is one block's weights plus two of the
widest Hessian. Two definitions are printed: the peak over the loaded model, and the peak over
the model *with its masks attached* (the result: one bool per pruned weight, which stays after
the call), i.e. the working memory the pruning itself needed. ``--src DIR`` runs another
checkout's ``prunekit`` (e.g. the main branch) for a before/after comparison.

    python benchmarks/sparsegpt_memory.py [--src /work/main/src] [--case linear|gpt2]
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
torch.manual_seed(0)
case = sys.argv[1]
if case == "linear":
    model = nn.Linear(4096, 1024)
    data = [torch.randn(256, 4096) for _ in range(4)]
    hessian = 4096 * 4096 * 4
    block = sum(p.numel() * 4 for p in model.parameters())
else:
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_layer=24, n_embd=1024, n_head=16, n_positions=256, vocab_size=50257)
    model = GPT2LMHeadModel(cfg).eval()
    data = [{"input_ids": torch.randint(0, 50257, (4, 128))} for _ in range(2)]
    hessian = 4096 * 4096 * 4  # the widest layer's (mlp.c_proj) Hessian
    block = sum(p.numel() * 4 for p in model.transformer.h[0].parameters())
def status(key):
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith(key))
gc.collect()
torch.set_num_threads(1)
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak
pk.prune(model, 0.5, criterion="sparsegpt", data=data, exclude=["lm_head"])
peak = status("VmHWM")
from prunekit.masks import mask_names
masks = sum(m.numel() * m.element_size() for mod in model.modules() for _, m in mask_names(mod))
extra, h = (peak - base) / 2**20, hessian / 2**20
print(json.dumps({"case": case, "extra_mib": extra, "hessian_mib": h, "block_mib": block / 2**20,
                  "masks_mib": masks / 2**20}))
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
    parser.add_argument("--case", choices=["linear", "gpt2"], action="append")
    args = parser.parse_args()
    print("peak resident memory while pruning, MiB over the model; 'with masks' counts the")
    print("result's masks (kept after the call) as part of the model; goal: block + 2 Hessians")
    print(f"{'case':8} {'over model':>11} {'masks':>7} {'over model+masks':>17} {'goal':>6}")
    for case in args.case or ["linear", "gpt2"]:
        r = measure(case, args.src)
        target = r["block_mib"] + 2 * r["hessian_mib"]
        work = r["extra_mib"] - r.get("masks_mib", 0.0)
        print(
            f"{case:8} {r['extra_mib']:11.0f} {r.get('masks_mib', 0.0):7.0f} {work:17.0f} "
            f"{target:6.0f}"
        )


if __name__ == "__main__":
    main()
