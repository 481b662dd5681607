"""``pk.optimize_for_inference``: BatchNorm folded into the conv/linear before it, exactly."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError, VerificationError
from prunekit.runtime.fuse import inference_report, optimize_for_inference
from tests.test_runtime_bench import keep_threads  # noqa: F401  (a fixture)


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so a fold has work to do."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.track_running_stats:
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g))
    return model


class Net(nn.Module):
    """conv-BN-ReLU, a residual conv-BN, a conv with a bias, a linear-BN1d head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)
        self.bn1d = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.bn(self.conv(x)))
        return self.bn1d(self.fc(x.mean((2, 3))))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(Net()).eval()


def _bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


X = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(2))


def test_folded_model_computes_what_the_original_did():
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(X)
    fused = optimize_for_inference(model, X)
    with torch.no_grad():
        out = fused(X)
        other = fused(torch.randn(2, 3, 7, 7)), model(torch.randn(2, 3, 7, 7))
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert _bns(fused) == 0 and _bns(model) == 3  # folded away in the copy only
    assert fused.stem[0].bias is not None and model.stem[0].bias is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    rep = inference_report(fused)
    assert sorted(rep.folded) == [("conv", "bn"), ("fc", "bn1d"), ("stem.0", "stem.1")]
    assert rep.kept == {} and rep.max_rel_error < 1e-5
    assert other[0].shape == (2, 6)


def test_the_fold_matches_a_hand_computed_one():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 1, bias=False), _randomise_bn(nn.BatchNorm2d(3)).eval()
    model = nn.Sequential(conv, bn).eval()
    fused = optimize_for_inference(model, torch.randn(1, 2, 4, 4))
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * scale[:, None, None, None]
    b = bn.bias - bn.running_mean * scale
    assert torch.allclose(fused[0].weight, w, atol=1e-6)
    assert torch.allclose(fused[0].bias, b, atol=1e-6)
    assert isinstance(fused[1], nn.Identity)


def test_a_pruned_masked_model_folds_and_keeps_its_zeros():
    model = _net()
    pk.prune(model, 0.5, granularity="channel", example_inputs=X)
    model.eval()
    zero_rows = model.stem[0].weight.detach().flatten(1).abs().sum(1) == 0
    assert zero_rows.any()
    with torch.no_grad():
        ref = model(X)
    fused = optimize_for_inference(model, X)
    with torch.no_grad():
        assert torch.allclose(fused(X), ref, rtol=1e-5, atol=1e-5)
    w = fused.stem[0].weight.detach().flatten(1)
    assert torch.equal(w.abs().sum(1) == 0, zero_rows)  # masked filters are still zero
    assert _bns(fused) == 0


def test_training_mode_is_refused_and_the_model_untouched():
    model = _net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="eval"):
        optimize_for_inference(model, X, inplace=True)
    assert model.training and _bns(model) == 3 and model.stem[0].bias is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class ReadTwice(nn.Module):
    """The conv's output goes to the BatchNorm and to the residual sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_a_conv_output_read_elsewhere_is_not_folded():
    torch.manual_seed(0)
    model = _randomise_bn(ReadTwice()).eval()
    fused = optimize_for_inference(model, X)
    assert isinstance(fused.bn, nn.BatchNorm2d)
    assert "read elsewhere" in inference_report(fused).kept["bn"]
    with torch.no_grad():
        assert torch.equal(fused(X), model(X))


class ReadsTheShape(ReadTwice):
    """Reading the conv output's shape and dtype is not reading its values: the fold goes on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) * y.shape[1] * y.size(2) * (y.dtype == torch.float32)


def test_a_shape_query_does_not_block_the_fold():
    torch.manual_seed(0)
    model = _randomise_bn(ReadsTheShape()).eval()
    fused = optimize_for_inference(model, X)
    assert inference_report(fused).folded == [("conv", "bn")]
    with torch.no_grad():
        assert torch.allclose(fused(X), model(X), rtol=1e-5, atol=1e-4)


class Awkward(nn.Module):
    """BatchNorms that must stay: after a ReLU, without running statistics, over a linear's
    sequence dimension, and behind a conv that runs twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.after_relu = nn.BatchNorm2d(3)
        self.batch_stats = nn.BatchNorm2d(3, track_running_stats=False)
        self.shared = nn.Conv2d(3, 3, 1)
        self.after_shared = nn.BatchNorm2d(3)
        self.fc = nn.Linear(10, 10)
        self.seq_bn = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.after_relu(torch.relu(self.conv(x)))
        x = self.batch_stats(self.shared(x))
        x = self.after_shared(self.shared(x))
        return self.seq_bn(self.fc(x.mean(2)))  # [N, 3, 10]: BatchNorm1d normalises dim 1


def test_batchnorms_that_cannot_fold_stay_with_a_reason():
    torch.manual_seed(0)
    model = _randomise_bn(Awkward()).eval()
    fused = optimize_for_inference(model, X)
    kept = inference_report(fused).kept
    assert set(kept) == {"after_relu", "batch_stats", "after_shared", "seq_bn"}
    assert "running statistics" in kept["batch_stats"]
    assert "more than once" in kept["after_shared"]
    assert "3-D" in kept["seq_bn"]
    assert inference_report(fused).folded == []
    with torch.no_grad():
        assert torch.equal(fused(X), model(X))


class ReadsTheNorm(nn.Module):
    """A forward that reads the BatchNorm's weight: folding breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1, bias=False), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) * self.bn.weight.sum()


def test_a_failed_check_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = _randomise_bn(ReadsTheNorm()).eval()
    conv_weight = model.conv.weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(VerificationError, match="nothing was changed"):
        optimize_for_inference(model, X, inplace=True)
    assert isinstance(model.bn, nn.BatchNorm2d) and model.conv.bias is None
    assert model.conv.weight is conv_weight
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_channels_last_moves_conv_weights_and_keeps_outputs():
    model = _net()
    fused = optimize_for_inference(model, X, channels_last=True)
    assert fused.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert inference_report(fused).channels_last
    with torch.no_grad():
        assert torch.allclose(fused(X), model(X), rtol=1e-5, atol=1e-5)


def test_inplace_changes_the_model_itself():
    model = _net()
    assert optimize_for_inference(model, X, inplace=True) is model
    assert _bns(model) == 0


def test_bad_arguments_are_refused():
    model = _net()
    with pytest.raises(ConfigError, match="example_inputs"):
        optimize_for_inference(model, None)
    with pytest.raises(ConfigError, match="rtol"):
        optimize_for_inference(model, X, rtol=0)
    with pytest.raises(ConfigError, match=r"nn\.Module"):
        optimize_for_inference("model", X)


def test_a_fused_model_is_not_saved(tmp_path):
    fused = pk.optimize_for_inference(_net(), X)
    with pytest.raises(ConfigError, match="from optimize_for_inference"):
        pk.save(fused, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def bn_net() -> nn.Module:
    """A factory for the CLI test: ``tests.test_runtime_fuse:bn_net``."""
    return _net()


def test_bench_optimizes_both_models_and_records_it():
    from prunekit.analysis.bench import bench
    from tests.test_runtime_bench import fixed_sampler

    base = _net()
    small = _net()
    pk.prune(small, 0.5, granularity="channel", example_inputs=X)
    small = pk.shrink(small.eval(), X)
    with torch.no_grad():
        ref = small(X)
    fast, result = bench(
        small, None, X, baseline=base, sampler=fixed_sampler({}), rounds=3,
        use_sparse_kernels=False, optimize=True,
    )  # fmt: skip
    assert _bns(fast) == 0 and _bns(base) == 3  # the caller's baseline is left as it was
    with torch.no_grad():
        assert torch.allclose(fast(X), ref, rtol=1e-5, atol=1e-5)
    d = result.to_dict()["optimized"]
    assert len(d["baseline"]["folded"]) == len(d["pruned"]["folded"]) == 3
    assert "optimised for inference" in str(result)


@pytest.mark.usefixtures("keep_threads")
def test_cli_bench_optimize(tmp_path, capsys):
    from prunekit.cli import main

    out = tmp_path / "pruned"
    spec = "tests.test_runtime_fuse:bn_net"
    prune = ["prune", spec, "--granularity", "channel", "--sparsity", "0.5",
             "--example-shape", "2,3,10,10", "-o", str(out)]  # fmt: skip
    assert main(prune) == 0
    capsys.readouterr()
    bench = ["bench", str(out), "--rounds", "3", "--json", "--trust-source", "--no-sparse-kernels"]
    assert main([*bench, "--channels-last"]) == 0
    d = json.loads(capsys.readouterr().out)
    for side in ("baseline", "pruned"):
        rep = d["optimized"][side]
        assert len(rep["folded"]) == 3 and rep["channels_last"] and rep["max_rel_error"] < 1e-4
    assert main(bench) == 0
    assert json.loads(capsys.readouterr().out)["optimized"] == {}


def test_a_bfloat16_model_folds_within_its_precision():
    model = _net().to(torch.bfloat16)
    x = X.to(torch.bfloat16)
    fused = optimize_for_inference(model, x)  # the fold is computed in float64, then rounded
    rep = inference_report(fused)
    assert len(rep.folded) == 3 and 0 < rep.max_rel_error < 1e-2
    assert fused.conv.weight.dtype == torch.bfloat16
    with pytest.raises(VerificationError):
        optimize_for_inference(model, x, rtol=1e-6)
