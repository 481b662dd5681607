"""``pk.optimize_for_inference(model, example_inputs)``: fold eval-mode BatchNorm into the
convolution or linear layer that feeds it, and optionally move conv weights to channels-last.

A BatchNorm in eval mode is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * γ +
β``, so when its input is a convolution's (or a linear's) output and nothing else reads that
output, the two are one layer: the weights scaled per output channel, a bias added. Folding
removes one module call and one pass over the activations per BatchNorm; on a CPU at batch 1 this
is a few percent of a ResNet-50 and more of a pruned one, whose convolutions shrank and whose
per-layer overheads did not.

Pairs are found on a real forward pass over ``example_inputs``: a torch-function mode records
which calls read each convolution's output, so a BatchNorm is folded only when it is the sole
reader of an output of a conv/linear called once, and the result is checked against the model's
own outputs (relative error printed in the report, above ``rtol`` an error and nothing changed).

This is an inference-time transform: the result has no BatchNorm left to train, its
``state_dict`` keys differ (the BatchNorms are gone, convolutions gain a bias), so it is not
something to fine-tune, ``pk.save`` or load into the original class. Keep the unfused model for
that, and optimise the copy you run; ``pk.export_onnx`` of the optimised model is fine. A model
in training mode is refused.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights
from torch.overrides import TorchFunctionMode

from ..errors import ConfigError, VerificationError
from ..example_inputs import call, seeded
from ..outputs import flatten, max_rel_error

REPORT_ATTR = "_pk_inference_report"

#: layers a BatchNorm folds into: their stock forward is one conv / linear call
_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

#: calls and properties that read a tensor's metadata, not its values
_METADATA = {
    "__get__", "size", "dim", "numel", "__len__", "is_floating_point", "stride", "is_contiguous",
    "element_size", "get_device", "nelement", "ndimension", "has_names", "storage_offset",
    "__hash__", "data_ptr", "untyped_storage", "shape", "dtype", "device", "ndim", "is_cuda",
    "requires_grad", "grad_fn", "layout", "is_sparse", "is_quantized", "is_meta", "names",
    "itemsize", "nbytes", "is_leaf", "is_mkldnn",
}  # fmt: skip


@dataclass
class InferenceReport:
    """What :func:`optimize_for_inference` did."""

    #: (layer, BatchNorm) names of every folded pair
    folded: list[tuple[str, str]] = field(default_factory=list)
    #: BatchNorm name -> why it stays
    kept: dict[str, str] = field(default_factory=dict)
    channels_last: bool = False
    #: max |optimised - original| / max |original| over the outputs on the example inputs
    max_rel_error: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "folded": [list(p) for p in self.folded],
            "kept": dict(self.kept),
            "channels_last": self.channels_last,
            "max_rel_error": self.max_rel_error,
        }

    def __str__(self) -> str:
        kept = f", {len(self.kept)} kept" if self.kept else ""
        layout = ", channels-last" if self.channels_last else ""
        return (
            f"{len(self.folded)} BatchNorm folded{kept}{layout}; "
            f"max relative error {self.max_rel_error:.1e}"
        )


def inference_report(model: nn.Module) -> InferenceReport | None:
    """The report of the :func:`optimize_for_inference` call that produced ``model``, if any."""
    return getattr(model, REPORT_ATTR, None)


def optimize_for_inference(
    model: nn.Module,
    example_inputs: Any,
    *,
    channels_last: bool = False,
    rtol: float | None = None,
    inplace: bool = False,
) -> nn.Module:
    """An inference copy of ``model`` (eval mode) with every foldable BatchNorm folded into the
    conv or linear before it, and with ``channels_last`` its 2-D convolutions' weights in
    channels-last memory format (the layout oneDNN's CPU convolutions and pooling run fastest in;
    the activations follow, the inputs may stay NCHW). ``inplace`` changes ``model`` itself
    instead of a copy.

    The result is checked against ``model`` on ``example_inputs`` (a tensor, a tuple of positional
    inputs or a dict of keyword inputs): a relative error above ``rtol`` (default 1e-4, 1e-2 for
    a model in 16-bit floats) raises :class:`~prunekit.errors.VerificationError` and leaves
    ``model`` as it was.
    :func:`inference_report` gives what was folded and the error. Masked (pruned, not yet shrunk)
    models fold too: a masked channel's weights stay zero. This is a transform for running the
    model; see the module docstring for what it means for training, saving and export.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"optimize_for_inference takes an nn.Module, got {type(model).__name__}")
    training = [n or "<root>" for n, m in model.named_modules() if m.training]
    if training:
        raise ConfigError(
            "optimize_for_inference folds eval-mode BatchNorm statistics: call model.eval() first "
            f"({len(training)} modules in training mode, e.g. {training[0]})"
        )
    if example_inputs is None:
        raise ConfigError("optimize_for_inference needs example_inputs to find and check folds")
    if rtol is None:
        rtol = 1e-2 if _half(model) else 1e-4
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol > 0:
        raise ConfigError(f"rtol must be a positive number, got {rtol!r}")
    work = model if inplace else copy.deepcopy(model)
    with torch.no_grad():
        ref, pairs, kept = _find_pairs(work, example_inputs)
        undo = [_fold(work, layer, bn) for layer, bn in pairs]
        if channels_last:
            formats = _to_channels_last(work)
        try:
            with seeded(example_inputs):
                out = call(work, example_inputs)
            err = max_rel_error(ref, out)
        except Exception as e:  # a forward that reads a removed BatchNorm: never hand it out
            err, failure = float("inf"), f"{type(e).__name__}: {e}"
        else:
            failure = f"relative error {err:.2e} > {rtol:g}"
        if not err <= rtol:
            if channels_last:
                _restore_formats(formats)
            for restore in reversed(undo):
                restore()
            raise VerificationError(
                f"the optimised {type(model).__name__} differs from the original on "
                f"example_inputs ({failure}); nothing was changed"
            )
    report = InferenceReport([(a, b) for a, b in pairs], kept, channels_last, err)
    setattr(work, REPORT_ATTR, report)
    return work


# -- finding the pairs -------------------------------------------------------------------------
class _Readers(TorchFunctionMode):
    """Records which module's forward reads each watched tensor (a producer's output)."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        #: id(tensor) -> the tensor (kept alive, so no id is reused while recording)
        self.watched: dict[int, torch.Tensor] = {}
        #: id(tensor) -> names of the modules whose forward read it
        self.readers: dict[int, list[str]] = defaultdict(list)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__":  # a property: .shape, .dtype ... read no values; .T, .data do
            name = getattr(getattr(func, "__self__", None), "__name__", name)
        if name not in _METADATA:
            for t in flatten((args, kwargs)):
                if id(t) in self.watched:
                    self.readers[id(t)].append(self.stack[-1])
        return func(*args, **kwargs)


Pairs = list[tuple[str, str]]


def _find_pairs(model: nn.Module, inputs: Any) -> tuple[Any, Pairs, dict[str, str]]:
    """Run ``model`` once, recording calls; returns its outputs, the (layer, BatchNorm) pairs
    that fold and why every other BatchNorm stays."""
    stack = [""]
    rec = _Readers(stack)
    calls: dict[str, int] = defaultdict(int)
    produced: dict[str, torch.Tensor] = {}  # producer name -> its (last) output
    bn_input: dict[str, Any] = {}
    names = {id(m): n for n, m in model.named_modules()}
    handles = []

    def pre(mod, args):
        name = names[id(mod)]
        stack.append(name)
        calls[name] += 1
        if isinstance(mod, _BatchNorm):
            bn_input[name] = args[0] if args else None

    def post(mod, args, out):
        stack.pop()
        if isinstance(mod, _PRODUCERS) and isinstance(out, torch.Tensor):
            produced[names[id(mod)]] = out
            rec.watched[id(out)] = out

    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post, always_call=True))
        with rec, seeded(inputs):
            ref = call(model, inputs)
    finally:
        for h in handles:
            h.remove()
    outputs = {id(t) for t in flatten(ref) if isinstance(t, torch.Tensor)}
    by_output = {id(t): n for n, t in produced.items()}
    modules = dict(model.named_modules())
    shared = _shared_names(model)
    pairs, kept = [], {}
    for name, x in bn_input.items():
        bn = modules[name]
        layer = by_output.get(id(x)) if isinstance(x, torch.Tensor) else None
        why = _why_not(name, bn, layer, modules.get(layer), x, calls, rec, outputs, shared)
        if why:
            kept[name] = why
        else:
            pairs.append((layer, name))
    for name, m in modules.items():
        if isinstance(m, _BatchNorm) and name not in bn_input:
            kept[name] = "not called on the example inputs"
    return ref, pairs, kept


def _why_not(
    name: str,
    bn: nn.Module,
    layer: str | None,
    producer: nn.Module | None,
    x: torch.Tensor,
    calls: dict[str, int],
    rec: _Readers,
    outputs: set[int],
    shared: set[str],
) -> str:
    """Why BatchNorm ``name`` cannot fold into ``layer`` ("" if it can)."""
    if type(bn).forward is not _BatchNorm.forward:
        return f"{type(bn).__name__} has its own forward"
    if not bn.track_running_stats or bn.running_mean is None:
        return "no running statistics (it normalises with batch statistics)"
    if layer is None or producer is None:
        return "its input is not a convolution's or linear's output"
    if not any(type(producer).forward is c.forward for c in _PRODUCERS):
        return f"{layer} ({type(producer).__name__}) has its own forward"
    if calls[name] != 1 or calls[layer] != 1:
        return f"{layer} or {name} runs more than once per forward"
    if name in shared or layer in shared:
        return f"{layer} or {name} is registered under more than one name"
    if isinstance(producer, nn.Linear) and x.dim() != 2:
        return f"{layer}'s output is {x.dim()}-D: the BatchNorm normalises another dimension"
    if id(x) in outputs or any(r != name for r in rec.readers[id(x)]):
        return f"{layer}'s output is also read elsewhere"
    return ""


def _shared_names(model: nn.Module) -> set[str]:
    """Names of modules (or of modules holding parameters) that appear more than once."""
    seen: dict[int, list[str]] = defaultdict(list)
    for n, m in model.named_modules(remove_duplicate=False):
        seen[id(m)].append(n)
    params: dict[int, int] = defaultdict(int)
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                params[id(p)] += 1
    out = {n for names in seen.values() if len(names) > 1 for n in names}
    for n, m in model.named_modules():
        if any(p is not None and params[id(p)] > 1 for p in m._parameters.values()):
            out.add(n)  # a tied weight: folding would change the other user too
    return out


# -- folding -----------------------------------------------------------------------------------
def _fold(model: nn.Module, layer_name: str, bn_name: str):
    """Fold BatchNorm ``bn_name`` into ``layer_name`` in place (weights keep their Parameter
    objects, so mask hooks stay); the BatchNorm becomes ``nn.Identity``. Returns an undo."""
    layer = model.get_submodule(layer_name)
    bn = model.get_submodule(bn_name)
    w, b = layer.weight, layer.bias
    bias = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if b is None else b
    fuse = fuse_linear_bn_weights if isinstance(layer, nn.Linear) else fuse_conv_bn_weights
    nw, nb = fuse(w.detach().double(), bias.detach().double(), *_bn_tensors(bn))
    old_w = w.detach().clone()
    old_b = None if b is None else b.detach().clone()
    w.copy_(nw.to(w.dtype))
    if b is None:
        layer.bias = nn.Parameter(nb.detach().to(w.dtype), requires_grad=w.requires_grad)
    else:
        b.copy_(nb.to(b.dtype))
    parent_name, _, attr = bn_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    setattr(parent, attr, nn.Identity())

    def undo() -> None:
        w.copy_(old_w)
        if old_b is None:
            layer.bias = None
        else:
            layer.bias.copy_(old_b)
        setattr(parent, attr, bn)

    return undo


def _bn_tensors(bn: nn.Module) -> tuple:
    """running mean, running var, eps, γ, β, in float64 (γ = 1, β = 0 without affine)."""
    mean, var = bn.running_mean.detach().double(), bn.running_var.detach().double()
    w = torch.ones_like(mean) if bn.weight is None else bn.weight.detach().double()
    b = torch.zeros_like(mean) if bn.bias is None else bn.bias.detach().double()
    return mean, var, bn.eps, w, b


def _to_channels_last(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every 2-D convolution's weight to channels-last (in place, the same Parameter); the
    activations follow. Other 4-D tensors (attention-mask buffers) stay. Returns an undo list."""
    changed = []
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.modules.conv._ConvNd) and isinstance(w, torch.Tensor) and w.dim() == 4:
            changed.append((w, w.data))
            w.data = w.data.contiguous(memory_format=torch.channels_last)
    return changed


def _restore_formats(changed: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for t, before in changed:
        t.data = before


# -- helpers -----------------------------------------------------------------------------------
def _half(model: nn.Module) -> bool:
    """The model computes in a 16-bit float type (its first floating-point parameter does)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype in (torch.float16, torch.bfloat16)
    return False
