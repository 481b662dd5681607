"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: a tiny Llama trained
by ``transformers.Trainer`` (gloo, CPU, DDP) with prunekit's PruningCallback, each rank on its own
shard of the data; every rank writes its masks and weights to OUT/rank{R}.safetensors.

    torchrun --nproc_per_node 2 tests/dist_hf_trainer.py OUT
"""

from __future__ import annotations

import os
import sys

import torch
import transformers
from safetensors.torch import save_file

import prunekit as pk
from prunekit.integrations.hf import PruningCallback


def main(out: str) -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 64, (64, 12), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in ids]
    args = transformers.TrainingArguments(
        output_dir=out, max_steps=8, per_device_train_batch_size=4, learning_rate=1e-3,
        use_cpu=True, ddp_backend="gloo", save_strategy="no", report_to=[], seed=0,
        disable_tqdm=True, logging_steps=100,
    )  # fmt: skip
    pruner = pk.Pruner(model, pk.PruneConfig(sparsity=0.5, schedule=pk.Cubic(0, 6, every=2)))
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=data,
        data_collator=transformers.default_data_collator, callbacks=[PruningCallback(pruner)],
    )  # fmt: skip
    trainer.train()
    rank = int(os.environ["RANK"])
    state = {f"mask:{k}": v.to(torch.uint8) for k, v in pk.MaskState(model).masks.items()}
    state.update({f"weight:{k}": v.detach().clone() for k, v in model.state_dict().items()})
    save_file(state, os.path.join(out, f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
