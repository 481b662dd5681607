"""transformers.Trainer integration: real Trainer.train() runs on a tiny Llama with gradient
accumulation, bf16 autocast on CPU, checkpoints and resume, and distillation."""

from __future__ import annotations

import copy
import os

import pytest
import torch

import prunekit as pk

transformers = pytest.importorskip("transformers")
from prunekit.integrations.hf import DistillationTrainer, PruningCallback  # noqa: E402
from prunekit.train.distill import kl_loss  # noqa: E402

pytestmark = pytest.mark.slow


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        initializer_range=0.3,  # peaked logits: pruning changes them measurably
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def dataset(n: int = 32, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, 12), generator=g)
    return [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in ids]


def arguments(out, **kw):
    base = dict(
        output_dir=str(out), max_steps=8, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, learning_rate=1e-3, bf16=True, use_cpu=True,
        save_strategy="steps", save_steps=4, logging_steps=100, report_to=[], seed=0,
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    base.update(kw)
    return transformers.TrainingArguments(**base)


def config() -> pk.PruneConfig:
    return pk.PruneConfig(sparsity=0.5, schedule=pk.Cubic(start=0, end=6, every=2))


def train(model, out, resume=None):
    pruner = pk.Pruner(model, config())
    trainer = transformers.Trainer(
        model=model, args=arguments(out), train_dataset=dataset(),
        data_collator=transformers.default_data_collator, callbacks=[PruningCallback(pruner)],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return pruner, trainer


def test_callback_prunes_per_optimizer_step_and_resumes(tmp_path):
    model = tiny_llama()
    pruner, trainer = train(model, tmp_path)
    assert trainer.state.global_step == 8 and pruner.state_dict()["step"] == 8
    masks = pk.MaskState(model).masks
    assert masks
    for t in pruner.targets:  # the exact target in every layer, zeros under every mask
        w = t.weight
        assert int((w == 0).sum()) == round(0.5 * w.numel())
        assert not w[~masks[t.qualname]].any()
    # the checkpoint at step 4 holds the pruner's state, and its weights have those zeros
    from safetensors.torch import load_file

    ckpt = tmp_path / "checkpoint-4"
    saved_masks = load_file(str(ckpt / "prunekit_pruner.safetensors"))
    saved_weights = load_file(str(ckpt / "model.safetensors"))
    assert saved_masks
    for name, mask in saved_masks.items():
        assert not saved_weights[name][~mask.bool()].any()
        assert 0 < (~mask.bool()).float().mean() < 0.5  # mid-schedule
    # resume in a fresh model: masks and schedule come back, and the run ends where it did
    fresh = tiny_llama(seed=1)
    pruner2, _trainer2 = train(fresh, tmp_path, resume=str(ckpt))
    assert pruner2.state_dict()["step"] == 8
    for name, mask in pk.MaskState(fresh).masks.items():
        assert not (mask & ~saved_masks[name].bool()).any()  # only shrank from the checkpoint
        assert (~mask).float().mean().item() == pytest.approx(0.5, abs=1e-3)
        assert not fresh.get_parameter(name)[~mask].any()
    for t in pruner2.targets:
        assert int((t.weight == 0).sum()) == round(0.5 * t.weight.numel())


def test_distillation_trainer_recovers_towards_the_teacher(tmp_path):
    teacher = tiny_llama().eval()
    student = copy.deepcopy(teacher)
    pk.prune(student, granularity="2:4")
    held_out = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(7))

    def gap():
        with torch.no_grad():
            return float(
                kl_loss(student.eval()(held_out).logits, teacher(held_out).logits, 1.0, None)
            )

    before = gap()
    trainer = DistillationTrainer(
        model=student, teacher=teacher, temperature=1.0, alpha=1.0,
        args=arguments(tmp_path, max_steps=30, save_strategy="no", learning_rate=1e-2),
        train_dataset=dataset(64), data_collator=transformers.default_data_collator,
    )  # fmt: skip
    trainer.train()
    assert gap() < 0.8 * before
    for _, module, pname, mask in pk.MaskState(student).items():
        w = getattr(module, pname)
        assert not w[~mask].any()
        assert (w.reshape(-1, 4) != 0).sum(-1).max() <= 2
    assert not os.path.exists(tmp_path / "checkpoint-20")
