"""Distillation: the loss terms against hand computations, training that moves the student towards
the teacher with its masks held, determinism, Hugging Face models, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.train import Distiller, distill
from prunekit.train.distill import kl_loss, mse_loss


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 8))


def batches(n: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 16, generator=g) for _ in range(n)]


def gap(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    student.eval()
    with torch.no_grad():
        return float(F.mse_loss(student(x), teacher(x)))


def test_kl_loss_matches_hand_computation():
    s, t = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    temp = 2.5
    p_t, p_s = torch.softmax(t / temp, -1), torch.softmax(s / temp, -1)
    per_pos = (p_t * (p_t.log() - p_s.log())).sum(-1)  # [3, 5]
    expected = per_pos[mask.bool()].mean() * temp**2
    got = kl_loss(s, t, temp, mask.float())
    torch.testing.assert_close(got, expected)
    assert float(kl_loss(t, t, temp, None)) == pytest.approx(0.0, abs=1e-6)


def test_mse_loss_ignores_padding():
    s, t = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 0]])
    expected = (s - t)[mask.bool()].square().mean()
    torch.testing.assert_close(mse_loss(s, t, mask), expected)


def test_distill_moves_student_to_teacher_and_holds_masks():
    teacher = mlp()
    student = copy.deepcopy(teacher)
    pk.prune(student, 0.8)
    masks = pk.MaskState(student).state_dict()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    held_out = torch.randn(256, 16, generator=torch.Generator().manual_seed(9))
    before = gap(student, teacher, held_out)
    history = distill(student, teacher, batches(), steps=150, lr=3e-3)
    after = gap(student, teacher, held_out)
    assert after < 0.6 * before
    assert history.steps == 150 and len(history.losses) == 150
    for name, mask in pk.MaskState(student).masks.items():
        assert torch.equal(mask, masks[name])  # masks unchanged
    for name, w in student.state_dict().items():
        if name in masks:
            assert not w[~masks[name]].any()  # pruned weights exactly zero
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k])  # the teacher never trains
    assert all(p.grad is None for p in teacher.parameters())


def test_distill_is_deterministic_with_a_seed():
    teacher = mlp()
    runs = []
    for seed in (0, 0, 1):
        student = copy.deepcopy(teacher)
        pk.prune(student, 0.5)
        distill(student, teacher, batches(), steps=20, lr=1e-3, seed=seed)
        runs.append(student.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])  # dropout follows seed


def test_task_loss_is_mixed_in_with_alpha():
    teacher, student = mlp().eval(), mlp().eval()
    x, y = torch.randn(8, 16), torch.randint(0, 8, (8,))
    for alpha in (0.0, 0.3, 1.0):
        d = Distiller(
            student,
            teacher,
            alpha=alpha,
            temperature=1.0,
            inputs=lambda b: b[0],
            loss_fn=lambda out, b: F.cross_entropy(out, b[1]),
        )
        student.eval()
        total, parts = d.loss((x, y))
        kd = F.kl_div(
            F.log_softmax(student(x), -1), F.log_softmax(teacher(x), -1), log_target=True,
            reduction="batchmean",
        )  # fmt: skip
        task = F.cross_entropy(student(x), y)
        torch.testing.assert_close(total, alpha * kd + (1 - alpha) * task)
        assert parts["task"] == pytest.approx(float(task.detach()), rel=1e-5)


def test_eval_callback_runs_every_n_steps_and_at_the_end():
    teacher = mlp()
    student = copy.deepcopy(teacher)
    seen = []
    history = distill(
        student, teacher, batches(), steps=25, eval_every=10,
        eval_fn=lambda m, step: seen.append((step, m.training)) or step,
    )  # fmt: skip
    assert seen == [(10, False), (20, False), (25, False)]
    assert history.evals == [(10, 10), (20, 20), (25, 25)]
    assert student.training  # restored


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    return BertModel(config).eval()


def text_batches(n: int = 4, vocab: int = 64, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (4, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 8:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_hf_encoder_hidden_states_with_projection_for_a_shrunk_student():
    teacher = tiny_bert()
    student = copy.deepcopy(teacher)
    data = text_batches()
    pk.prune(student, 0.5, granularity="channel", include=r"encoder\..*", example_inputs=data[0])
    student = pk.shrink(student, data[0])
    layer = "encoder.layer.0.intermediate"
    widths = [dict(m.named_modules())[layer].dense.out_features for m in (student, teacher)]
    assert widths[0] < widths[1]
    d = Distiller(student, teacher, hidden_layers=[layer])
    d.prepare(data[0])
    assert dict(d.projections.named_children()).keys() == {layer.replace(".", "__")}
    history = distill(student, teacher, data, steps=40, lr=3e-3, hidden_layers=[layer])
    assert history.losses[-1] < 0.5 * history.losses[0]
    with pytest.raises(ConfigError, match="prepare"):
        Distiller(student, teacher, hidden_layers=[layer]).loss(data[0])


def test_hf_causal_lm_uses_kl_and_the_labels_loss():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    teacher = LlamaForCausalLM(config).eval()
    student = copy.deepcopy(teacher)
    pk.prune(student, granularity="2:4")
    data = [{**b, "labels": b["input_ids"]} for b in text_batches()]
    d = Distiller(student, teacher, alpha=0.5)
    _, parts = d.loss(data[0])
    assert set(parts) == {"kd", "task"}
    distill(student, teacher, data, steps=10, lr=1e-3)
    assert all(r.nm_valid for r in pk.report(student).layers)
    for _, module, pname, mask in pk.MaskState(student).items():
        w = getattr(module, pname)
        assert not w[~mask].any()
        assert (w.reshape(-1, 4) != 0).sum(-1).max() <= 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0}, "temperature"),
        ({"target": "soft"}, "target"),
        ({"hidden_layers": ["nope"]}, "nope"),
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_bad_input_raises_before_training(kwargs, match):
    teacher = mlp()
    student = copy.deepcopy(teacher)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    kwargs = {"steps": 5, **kwargs}
    with pytest.raises(ConfigError, match=match):
        distill(student, teacher, batches(), **kwargs)
    assert all(torch.equal(v, state[k]) for k, v in student.state_dict().items())


def test_same_module_as_teacher_and_exhausted_iterator_are_refused():
    teacher = mlp()
    with pytest.raises(ConfigError, match="same module"):
        distill(teacher, teacher, batches(), steps=1)
    student = copy.deepcopy(teacher)
    with pytest.raises(ConfigError, match="re-iterable"):
        distill(student, teacher, iter(batches(2)), steps=5)


def test_pooled_target_is_one_minus_cosine_of_mean_pooled_embeddings():
    from prunekit.train.distill import pooled_cosine_loss

    s, t = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]])
    expected = torch.stack(
        [1 - F.cosine_similarity(s[i, mask[i].bool()].mean(0), t[i, mask[i].bool()].mean(0), 0)
         for i in range(2)]
    ).mean()  # fmt: skip
    torch.testing.assert_close(pooled_cosine_loss(s, t, mask), expected)
    teacher = tiny_bert()
    student = copy.deepcopy(teacher)
    data = text_batches()
    pk.prune(student, 0.9, include=r"encoder\..*")
    for m in student.modules():  # no dropout: the loss measures the pruning alone
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    d = Distiller(student, teacher, target="pooled")
    with torch.no_grad():
        got = d.loss(data[0])[0]
        s_h, t_h = student(**data[0]).last_hidden_state, teacher(**data[0]).last_hidden_state
    torch.testing.assert_close(got, pooled_cosine_loss(s_h, t_h, data[0]["attention_mask"].float()))

    def mean_loss() -> float:
        with torch.no_grad():
            student.eval()
            return sum(float(d.loss(b)[0]) for b in data) / len(data)

    before = mean_loss()
    distill(student, teacher, data, steps=40, lr=1e-3, target="pooled")
    assert mean_loss() < 0.5 * before


def test_lr_factor_warms_up_then_follows_the_steps_or_the_budget_whichever_is_further():
    import math

    from prunekit.train.loop import lr_factor

    assert lr_factor(0, 100, 10) == pytest.approx(0.1)  # warm-up: (step + 1) / warmup
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)  # halfway through the cosine
    assert lr_factor(10, 100_000, 10, spent=0.5) == pytest.approx(0.5)  # the budget is further
    assert lr_factor(10, 100_000, 10, spent=0.25) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4))
    )
    assert lr_factor(55, 100, 10, spent=0.1) == pytest.approx(0.5)  # the steps are further
    assert lr_factor(99, 100_000, 10, spent=1.0) == 0.0


@pytest.mark.parametrize("dropout", [True, False])
def test_dropout_off_trains_on_the_eval_forward_and_restores_the_rates(dropout):
    from prunekit.train.loop import run_training

    model = tiny_bert()
    data = text_batches()
    rates = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert rates and all(p > 0 for p in rates)
    gaps = []

    def loss_of(batch):  # the training forward against a plain eval forward of the same weights
        out = model(**batch).last_hidden_state
        with torch.no_grad():
            model.eval()
            gaps.append(float((out - model(**batch).last_hidden_state).abs().max()))
            model.train()
        return out.square().mean()

    run_training(model, data, 4, loss_of, lr=1e-3, dropout=dropout)
    assert (max(gaps) == 0.0) is not dropout
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == rates
    # through distill: with dropout off nothing is random, so the seed changes nothing
    teacher, trained = tiny_bert(), []
    for seed in (0, 1):
        student = copy.deepcopy(teacher)
        pk.prune(student, 0.5, include=r"encoder\..*")
        distill(student, teacher, data, steps=3, lr=1e-3, dropout=dropout, seed=seed)
        trained.append(student.encoder.layer[0].output.dense.weight.detach().clone())
    assert torch.equal(*trained) is not dropout


@pytest.mark.parametrize(("target", "layers"), [("pooled", True), ("hidden", False)])
def test_cache_teacher_runs_it_once_per_batch_and_trains_the_same_weights(target, layers):
    teacher, data = tiny_bert(), text_batches()
    calls = []
    teacher.register_forward_hook(lambda module, args, out: calls.append(1))
    hidden = ["encoder.layer.0", "encoder.layer.1"] if layers else None
    trained = []
    for cache in (False, True):
        calls.clear()
        student = tiny_bert()  # the teacher's weights, not its hook
        pk.prune(student, 0.5, include=r"encoder\..*")
        distill(student, teacher, data, steps=3 * len(data), lr=1e-3, target=target,
                hidden_layers=hidden, cache_teacher=cache)  # fmt: skip
        # one teacher forward per step (plus prepare's probe with layers), or per batch
        assert len(calls) == (len(data) if cache else 3 * len(data)) + (1 if layers else 0)
        trained.append(student.state_dict())
    for name, value in trained[0].items():
        assert torch.equal(value, trained[1][name]), name


def test_cache_teacher_refuses_data_it_cannot_index_before_training():
    teacher = mlp()
    student = copy.deepcopy(teacher)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ConfigError, match="list or tuple"):
        distill(student, teacher, (b for b in batches()), steps=2, cache_teacher=True)
    assert all(torch.equal(v, state[k]) for k, v in student.state_dict().items())


def test_autocast_bfloat16_trains_in_mixed_precision_with_float32_weights_and_teacher_targets():
    from prunekit.train.loop import run_training

    teacher, data = tiny_bert(), text_batches()
    student = tiny_bert()
    pk.prune(student, 0.5, include=r"encoder\..*")
    dtypes = []  # of a linear's output
    linear = student.encoder.layer[0].intermediate.dense
    handle = linear.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))

    def loss_of(batch):
        return student(**batch).last_hidden_state.float().square().mean()

    run_training(student, data, 2, loss_of, lr=1e-3, autocast=torch.bfloat16)
    assert dtypes == [torch.bfloat16] * 2  # the forward ran under autocast
    handle.remove()
    assert all(p.dtype == torch.float32 for p in student.parameters())
    d = Distiller(student, teacher, target="pooled", hidden_layers=["encoder.layer.0"])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        targets = d.teacher_targets(data[0])
    with torch.no_grad():
        exact = teacher(**data[0]).last_hidden_state
    mask = data[0]["attention_mask"].float().unsqueeze(-1)
    torch.testing.assert_close(targets["pooled"], (exact * mask).sum(1) / mask.sum(1))
    assert targets["layer:encoder.layer.0"].dtype == torch.float32
    distill(student, teacher, data, steps=4, lr=1e-3, target="pooled", autocast=torch.bfloat16)
    for _, module, pname, mask in pk.MaskState(student).items():
        assert not getattr(module, pname)[~mask].any()


def test_autocast_other_than_bfloat16_is_refused_before_training():
    teacher = mlp()
    student = copy.deepcopy(teacher)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ConfigError, match="bfloat16"):
        distill(student, teacher, batches(), steps=2, autocast=torch.float16)
    assert all(torch.equal(v, state[k]) for k, v in student.state_dict().items())
