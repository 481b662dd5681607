"""SparseGPT's peak memory over the loaded model, and its masks' independence of the thread count.

Each case runs in a fresh process: the peak resident memory while pruning (``VmHWM``, reset
through ``/proc/self/clear_refs`` once the model and calibration data are loaded) minus the
resident memory at that point (Linux only). Cases: a lone 4096->1024
linear (its Hessian is 4096² float32 = 64 MiB) and a randomly initialised GPT-2-medium-sized model
(24 blocks, width 1024, 355M parameters). The target is one block's weights plus two of the
widest Hessian. ``--src DIR`` runs another checkout's ``prunekit``
(e.g. the main branch) for a before/after comparison.

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
extra, h = (peak - base) / 2**20, hessian / 2**20
print(json.dumps({"case": case, "extra_mib": extra, "hessian_mib": h, "block_mib": block / 2**20}))
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
    print(f"{'case':8} {'peak over model (MiB)':>22} {'Hessians':>9} {'block + 2 H (MiB)':>18}")
    for case in args.case or ["linear", "gpt2"]:
        r = measure(case, args.src)
        ratio = r["extra_mib"] / r["hessian_mib"]
        target = r["block_mib"] + 2 * r["hessian_mib"]
        print(f"{case:8} {r['extra_mib']:22.0f} {ratio:9.1f} {target:18.0f}")


if __name__ == "__main__":
    main()
