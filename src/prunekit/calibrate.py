"""Calibration: forward-hook statistics and the block-by-block runner.

A calibration batch is anything the model's forward takes: a tensor (``model(x)``), a tuple
(``model(*batch)``) or a dict of keyword arguments (``model(**batch)``, e.g. Hugging Face
``input_ids`` / ``attention_mask``). ``data`` is an iterable of batches; a single tensor or dict
is taken as one batch.

Statistics (``kinds``) gathered per target, in the target's ``[out, in]`` matrix view:

* ``"norms"``: Σ x_j² per input column (Wanda's ‖X_j‖₂²);
* ``"hessian"``: XᵀX (SparseGPT, regression); layers that see the same input tensor (q/k/v,
  gate/up) share one accumulator, so XᵀX is computed once per distinct input;
* ``"outputs"``: zero-rate and mean of each output channel's post-activation output (APoZ,
  mean-activation).

The block runner (:func:`run_blockwise`) finds a transformer's repeated block list, captures the
first block's inputs with all their keyword arguments (never naming them), and then, block by
block: collects statistics for the block's targets in one pass, hands them to ``process`` (which
prunes or solves), and runs the pruned block to produce the next block's inputs. Memory holds one
block's inputs and outputs.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, WeightError
from .progress import track
from .targets import Target, is_hf_conv1d

KINDS = frozenset({"norms", "hessian", "outputs"})

#: one batch as (positional args, keyword args)
Batch = tuple[tuple[Any, ...], dict[str, Any]]

_PASSTHROUGH = (nn.Identity, nn.Dropout, nn.modules.batchnorm._BatchNorm)


# --------------------------------------------------------------------------------------- batches
def as_batches(data: Any) -> list[Batch]:
    """Normalise calibration ``data`` to a list of ``(args, kwargs)``; raise on bad batches."""
    if data is None:
        raise ConfigError("calibration data is None: pass data=<iterable of model inputs>")
    if isinstance(data, (torch.Tensor, Mapping)):
        data = [data]
    try:
        items = list(data)
    except TypeError:
        raise ConfigError(
            f"calibration data must be an iterable of batches, got {type(data).__name__}"
        ) from None
    if not items:
        raise ConfigError("calibration data is empty: pass at least one batch")
    out = []
    for i, b in enumerate(items):
        if isinstance(b, torch.Tensor):
            args, kwargs = (b,), {}
        elif isinstance(b, (tuple, list)):
            args, kwargs = tuple(b), {}
        elif isinstance(b, Mapping):
            args, kwargs = (), dict(b)
        else:
            raise ConfigError(
                f"calibration batch {i} is a {type(b).__name__}; a batch must be a tensor, "
                "a tuple of model arguments or a dict of keyword arguments"
            )
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        if not tensors:
            raise ConfigError(f"calibration batch {i} holds no tensor")
        empty = [tuple(t.shape) for t in tensors if t.numel() == 0]
        if empty:
            raise ConfigError(f"calibration batch {i} holds an empty tensor of shape {empty[0]}")
        out.append((args, kwargs))
    return out


def _to(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (tuples, lists, dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _describe(batch: Batch) -> str:
    args, kwargs = batch
    parts = [
        f"{type(a).__name__}{tuple(a.shape) if isinstance(a, torch.Tensor) else ''}" for a in args
    ]
    parts += [
        f"{k}={tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}"
        for k, v in kwargs.items()
    ]
    return ", ".join(parts)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def run_batch(model: nn.Module, batch: Batch, index: int, device: torch.device) -> Any:
    """``model(*args, **kwargs)`` for one batch; a shape or type mismatch raises ConfigError."""
    args, kwargs = _to(batch, device)
    try:
        return model(*args, **kwargs)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ConfigError(
            f"calibration batch {index} ({_describe(batch)}) does not fit "
            f"{type(model).__name__}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e


@contextlib.contextmanager
def calibration_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and, for Hugging Face models, no KV cache, restored on exit."""
    was_training = model.training
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    model.eval()
    if use_cache:
        config.use_cache = False
    try:
        yield
    finally:
        model.train(was_training)
        if use_cache:
            config.use_cache = use_cache


# ---------------------------------------------------------------------------------- statistics
def input_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as ``[groups, N, cols]`` float32 rows, aligned with its ``[out, in]`` view.

    Linear / HF Conv1D: ``[..., in] -> [1, N, in]``. Conv1d/2d: unfolded patches ``[B, C*k, L]``
    reordered to the matrix view's column order (kernel position, then channel fastest) and split
    by conv group: ``[G, B*L, k*C/G]``.
    """
    if isinstance(module, nn.Linear) or is_hf_conv1d(module):
        return x.reshape(1, -1, x.shape[-1]).float()
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        pad = module._reversed_padding_repeated_twice
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, list(pad), mode=mode) if any(pad) else x
        if isinstance(module, nn.Conv1d):  # [B, C, L] -> [B, C, 1, L]
            x = x.unsqueeze(-2)
            kernel, dil, stride = (
                (1, *module.kernel_size),
                (1, *module.dilation),
                (1, *module.stride),
            )
        else:
            kernel, dil, stride = module.kernel_size, module.dilation, module.stride
        cols = F.unfold(x.float(), kernel, dilation=dil, stride=stride)  # [B, C*kh*kw, L]
        b, _, length = cols.shape
        g, c, k = module.groups, module.in_channels, kernel[0] * kernel[1]
        cols = cols.view(b, g, c // g, k, length).permute(1, 0, 4, 3, 2)  # [G, B, L, k, C/G]
        return cols.reshape(g, b * length, k * (c // g))
    raise WeightError(
        f"{type(module).__name__} is not supported by input statistics "
        "(Linear, Conv1d, Conv2d and transformers Conv1D are)"
    )


def channel_dim(module: nn.Module) -> int:
    """The dimension of a layer's output that holds its output channels."""
    return 1 if isinstance(module, nn.modules.conv._ConvNd) else -1


def output_rows(y: torch.Tensor, dim: int) -> torch.Tensor:
    """An output tensor as ``[N, channels]`` float32 rows, channels taken from ``dim``."""
    return y.movedim(dim, -1).reshape(-1, y.shape[dim]).float()


def signature(module: nn.Module) -> tuple:
    """What :func:`input_columns` depends on besides the input itself."""
    if isinstance(module, nn.modules.conv._ConvNd):
        keys = ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
        return (type(module).__name__, *(getattr(module, k) for k in keys))
    return ("linear",)


class InputStats:
    """Running statistics of one layer input seen as ``[G, N, cols]`` (see :func:`input_columns`).

    ``n`` counts rows; ``sq`` is ``[G, cols]`` Σ x²; ``xtx`` is ``[G, cols, cols]`` XᵀX.
    """

    def __init__(self, kinds: frozenset[str], signature: tuple) -> None:
        self.kinds = kinds
        #: how the input is unfolded into columns; layers share stats only if this matches
        self.signature = signature
        self.n = 0
        self.sq: torch.Tensor | None = None
        self.xtx: torch.Tensor | None = None
        self._last: weakref.ref | None = None

    def seen(self, x: torch.Tensor) -> bool:
        return self._last is not None and self._last() is x

    def add(self, module: nn.Module, x: torch.Tensor) -> None:
        self._last = weakref.ref(x)
        cols = input_columns(module, x.detach())  # [G, N, cols]
        self.n += cols.shape[1]
        if "hessian" in self.kinds:  # Σ x² is then the diagonal of XᵀX
            if self.xtx is None:
                self.xtx = cols.transpose(1, 2) @ cols  # [G, cols, cols]
            else:
                self.xtx.baddbmm_(cols.transpose(1, 2), cols)
        elif "norms" in self.kinds:
            sq = cols.square().sum(1)
            self.sq = sq if self.sq is None else self.sq + sq

    @property
    def sumsq(self) -> torch.Tensor | None:
        """Σ x_j² per input column, ``[G, cols]``."""
        return self.xtx.diagonal(dim1=1, dim2=2) if self.xtx is not None else self.sq

    def norms(self) -> torch.Tensor:
        """‖X_j‖₂ per input column, ``[G, cols]`` (root mean square, scale-free for ranking)."""
        return (self.sumsq / max(self.n, 1)).sqrt()

    def hessian(self) -> torch.Tensor:
        """H = 2XᵀX/N, ``[G, cols, cols]`` float32."""
        if self.xtx is None:
            raise RuntimeError("hessian statistics were not collected")
        return self.xtx * (2.0 / max(self.n, 1))


class OutputStats:
    """Per output channel: zero count, sum and count of the post-activation output."""

    def __init__(self) -> None:
        self.zeros: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.n = 0

    def add(self, rows: torch.Tensor) -> None:  # rows: [N, out]
        z, s = (rows <= 0).sum(0).double(), rows.sum(0).double()
        self.zeros = z if self.zeros is None else self.zeros + z
        self.total = s if self.total is None else self.total + s
        self.n += rows.shape[0]

    def apoz(self) -> torch.Tensor:
        """Average percentage of zeros per channel, ``[out]``."""
        return (self.zeros / max(self.n, 1)).float()

    def mean(self) -> torch.Tensor:
        """Mean post-activation output per channel, ``[out]``."""
        return (self.total / max(self.n, 1)).float()


@dataclass
class LayerStats:
    """Everything calibration gathered for one target."""

    inputs: InputStats | None = None
    #: statistics of the output after the activation that consumes it
    outputs: OutputStats | None = None
    #: the same, taken as ReLU(output): used when no activation module consumes the output
    raw_outputs: OutputStats | None = None

    def post_activation(self, name: str) -> OutputStats:
        if self.outputs is not None and self.outputs.n:
            return self.outputs
        warnings.warn(
            f"{name}: no activation module consumes this layer's output; its post-activation "
            "statistics are taken as ReLU(output)",
            stacklevel=3,
        )
        return self.raw_outputs


def is_activation(module: nn.Module) -> bool:
    """A parameterless activation module: torch.nn's activations or transformers' ``ACT2FN``."""
    return (
        type(module).__module__ in ("torch.nn.modules.activation", "transformers.activations")
        and not any(True for _ in module.parameters(recurse=False))
        and not isinstance(module, (nn.MultiheadAttention, nn.Softmax, nn.LogSoftmax))
    )


class Collector:
    """Forward hooks that gather ``kinds`` statistics for ``targets`` while active (a context).

    ``root`` is searched for activation modules that consume a target's output (through BN,
    dropout or identity), for the ``"outputs"`` statistics.
    """

    def __init__(self, targets: list[Target], kinds: Iterable[str], root: nn.Module) -> None:
        kinds = frozenset(kinds)
        unknown = kinds - KINDS
        if unknown:
            raise ConfigError(f"unknown statistics {sorted(unknown)}; known: {sorted(KINDS)}")
        self.kinds, self.targets, self.root = kinds, targets, root
        self.stats: dict[str, LayerStats] = {t.qualname: LayerStats() for t in targets}
        self._shared: list[InputStats] = []
        self._pending: dict[int, tuple[weakref.ref, str, int]] = {}
        self._handles: list[Any] = []

    def _input_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                raise ConfigError(f"{name} was called without a positional input tensor")
            x = args[0]
            st = self.stats[name]
            if st.inputs is None:  # first call: share with a layer that saw this very tensor
                sig = signature(module)
                st.inputs = next(
                    (s for s in self._shared if s.seen(x) and s.signature == sig), None
                )
                if st.inputs is None:
                    st.inputs = InputStats(self.kinds, sig)
                    self._shared.append(st.inputs)
            if not st.inputs.seen(x):
                st.inputs.add(module, x)

        return hook

    def _output_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            st = self.stats[name]
            st.raw_outputs = st.raw_outputs or OutputStats()
            dim = channel_dim(module)
            st.raw_outputs.add(output_rows(output.detach(), dim).clamp_min(0))
            self._pending[id(output)] = (weakref.ref(output), name, dim)

        return hook

    def _follow_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        """On BN / dropout / identity / activations: follow a pending target output."""
        if not args or not isinstance(args[0], torch.Tensor):
            return
        entry = self._pending.get(id(args[0]))
        if entry is None or entry[0]() is not args[0]:
            return
        _, name, dim = entry
        if is_activation(module):
            st = self.stats[name]
            st.outputs = st.outputs or OutputStats()
            st.outputs.add(output_rows(output.detach(), dim))
        elif isinstance(output, torch.Tensor):
            self._pending[id(output)] = (weakref.ref(output), name, dim)

    def __enter__(self) -> Collector:
        wants_inputs = bool(self.kinds & {"norms", "hessian"})
        for t in self.targets:
            if wants_inputs:
                self._handles.append(t.module.register_forward_hook(self._input_hook(t.qualname)))
            if "outputs" in self.kinds:
                self._handles.append(t.module.register_forward_hook(self._output_hook(t.qualname)))
        if "outputs" in self.kinds:
            for m in self.root.modules():
                if isinstance(m, _PASSTHROUGH) or is_activation(m):
                    self._handles.append(m.register_forward_hook(self._follow_hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pending.clear()

    def end_batch(self) -> None:
        self._pending.clear()


@torch.no_grad()
def collect(
    model: nn.Module,
    targets: list[Target],
    data: Any,
    kinds: Iterable[str],
    progress: bool = False,
) -> dict[str, LayerStats]:
    """Whole-model hooks: one forward pass per batch; statistics keyed by ``Target.qualname``."""
    batches = data if _is_normalised(data) else as_batches(data)
    device = model_device(model)
    with calibration_mode(model), Collector(targets, kinds, model) as col:
        for i, batch in enumerate(track(batches, "calibrating", progress)):
            run_batch(model, batch, i, device)
            col.end_batch()
    _check_seen(col.stats)
    all_reduce(col.stats)
    return col.stats


def _is_normalised(data: Any) -> bool:
    return isinstance(data, list) and all(
        isinstance(b, tuple) and len(b) == 2 and isinstance(b[1], dict) for b in data
    )


def all_reduce(stats: dict[str, LayerStats]) -> None:
    """Sum the statistics over ranks when ``torch.distributed`` is initialised (each rank
    calibrated on its own batches). Shared accumulators are reduced once."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    done: set[int] = set()
    for st in stats.values():
        for acc in (st.inputs, st.outputs, st.raw_outputs):
            if acc is None or id(acc) in done:
                continue
            done.add(id(acc))
            for name in ("sq", "xtx", "zeros", "total"):
                value = getattr(acc, name, None)
                if isinstance(value, torch.Tensor):
                    dist.all_reduce(value)
            n = torch.tensor([acc.n], dtype=torch.float64)
            dist.all_reduce(n)
            acc.n = int(n.item())


def _check_seen(stats: dict[str, LayerStats]) -> None:
    for name, st in stats.items():
        if st.inputs is None and st.raw_outputs is None:
            raise ConfigError(
                f"{name} was never called during calibration; exclude it or check the data"
            )


# -------------------------------------------------------------------------------- block runner
def find_blocks(model: nn.Module, targets: list[Target]) -> tuple[str, nn.ModuleList] | None:
    """The longest ``nn.ModuleList`` of two or more same-typed blocks holding targets."""
    wanted = {id(t.module) for t in targets}
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) < 2:
            continue
        if len({type(b) for b in m}) != 1:
            continue
        if not any(id(sub) in wanted for b in m for sub in b.modules()):
            continue
        if best is None or len(m) > len(best[1]):
            best = (name, m)
    return best


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass at the first block."""


@dataclass
class _Inputs:
    """One batch's inputs to a block: args and kwargs; ``key`` locates the hidden states."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    key: int | str

    def hidden(self) -> torch.Tensor:
        return self.args[self.key] if isinstance(self.key, int) else self.kwargs[self.key]

    def with_hidden(self, h: torch.Tensor) -> _Inputs:
        if isinstance(self.key, int):
            args = (*self.args[: self.key], h, *self.args[self.key + 1 :])
            return _Inputs(args, self.kwargs, self.key)
        return _Inputs(self.args, {**self.kwargs, self.key: h}, self.key)


def _hidden_key(args: tuple, kwargs: dict) -> int | str:
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return i
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return k
    raise ConfigError("the first block received no floating-point tensor to propagate")


def _first_output(out: Any) -> torch.Tensor:
    """The hidden states a block returns: a tensor, or the first item of a tuple / ModelOutput."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple"):
        return out[0]
    raise ConfigError(f"a block returned {type(out).__name__}; expected a tensor or a tuple")


def capture_inputs(
    model: nn.Module, first: nn.Module, batches: list[Batch], offload: bool
) -> list[_Inputs]:
    """Run ``model`` on each batch up to ``first``; record its args and kwargs, as passed."""
    captured: list[_Inputs] = []
    store = torch.device("cpu") if offload else None

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        args, kwargs = (_to(args, store), _to(kwargs, store)) if store else (args, kwargs)
        captured.append(_Inputs(tuple(args), dict(kwargs), _hidden_key(args, kwargs)))
        raise _Stop

    device = model_device(model)
    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i, batch in enumerate(batches):
            try:
                run_batch(model, batch, i, device)
            except _Stop:
                continue
            raise ConfigError(f"calibration batch {i} never reached the model's first block")
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def run_blockwise(
    model: nn.Module,
    targets: list[Target],
    data: Any,
    kinds: Iterable[str],
    process: Callable[[list[Target], dict[str, LayerStats]], bool],
    *,
    progress: bool = False,
    offload: bool = False,
) -> None:
    """Calibrate and prune block by block (see the module docstring).

    ``process(targets, stats)`` prunes or solves the given targets from their statistics and
    returns True if it changed the weights. Targets outside the block list are handled after the
    blocks, with whole-model hooks. A model with no recognisable block list falls back to
    whole-model hooks for all targets, with a warning. ``offload`` keeps the captured activations
    on the CPU between block calls.
    """
    batches = as_batches(data)
    found = find_blocks(model, targets)
    if found is None:
        warnings.warn(
            f"{type(model).__name__} has no recognisable block list (an nn.ModuleList of "
            "same-typed blocks); calibrating with whole-model hooks instead",
            stacklevel=2,
        )
        process(targets, collect(model, targets, batches, kinds, progress))
        return
    _, blocks = found
    device = model_device(model)
    with calibration_mode(model):
        inputs = capture_inputs(model, blocks[0], batches, offload)
        done: set[int] = set()
        n = len(blocks)
        for i, block in enumerate(track(blocks, f"pruning {n} blocks", progress, total=n)):
            members = {id(m) for m in block.modules()}
            block_targets = [t for t in targets if id(t.module) in members]
            done.update(id(t.module) for t in block_targets)
            outputs = None
            if block_targets:
                outputs = []
                with Collector(block_targets, kinds, block) as col:
                    for inp in inputs:
                        outputs.append(_call_block(block, inp, device, offload))
                        col.end_batch()
                _check_seen(col.stats)
                all_reduce(col.stats)
                if process(block_targets, col.stats):
                    outputs = None
            if i == n - 1:
                break
            if outputs is None:
                outputs = [_call_block(block, inp, device, offload) for inp in inputs]
            inputs = [inp.with_hidden(h) for inp, h in zip(inputs, outputs, strict=True)]
    rest = [t for t in targets if id(t.module) not in done]
    if rest:
        process(rest, collect(model, rest, batches, kinds))


def _call_block(block: nn.Module, inp: _Inputs, device: torch.device, offload: bool) -> Any:
    args, kwargs = (
        (_to(inp.args, device), _to(inp.kwargs, device)) if offload else (inp.args, inp.kwargs)
    )
    h = _first_output(block(*args, **kwargs))
    return h.to("cpu") if offload else h


# ----------------------------------------------------------------------------------- gradients
def model_loss(output: Any, batch: Any, loss_fn: Callable[[Any, Any], torch.Tensor] | None) -> Any:
    """The scalar loss of one batch: ``loss_fn(output, batch)``, else the model's own loss
    (``output.loss``, ``output["loss"]``, or a scalar output)."""
    if loss_fn is not None:
        loss = loss_fn(output, batch)
    elif getattr(output, "loss", None) is not None:
        loss = output.loss
    elif isinstance(output, Mapping) and output.get("loss") is not None:
        loss = output["loss"]
    else:
        loss = output
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ConfigError(
            "this criterion needs a loss: pass loss_fn=<fn(output, batch) -> scalar>, or batches "
            "from which the model computes its own loss (e.g. Hugging Face labels=...)"
        )
    return loss.reshape(())


def gradient_sums(
    model: nn.Module,
    targets: list[Target],
    data: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    progress: bool = False,
    *,
    square: bool,
) -> dict[str, torch.Tensor]:
    """Σ over batches of ∂loss/∂W (``square=False``, for Taylor) or of (∂loss/∂W)² (``square=True``,
    a diagonal empirical Fisher, unscaled, for OBD), per target weight.

    Gradients are taken with ``torch.autograd.grad``: the parameters' ``.grad`` are untouched.
    """
    raw = [data] if isinstance(data, (torch.Tensor, Mapping)) else list(data or [])
    batches = as_batches(raw)
    device = model_device(model)
    params = [t.weight for t in targets]
    flags = [p.requires_grad for p in params]
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad(), calibration_mode(model):
            for i, batch in enumerate(track(batches, "gradients", progress)):
                loss = model_loss(run_batch(model, batch, i, device), raw[i], loss_fn)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for s, g in zip(sums, grads, strict=True):
                    if g is not None:
                        g = g.detach().float()
                        s.add_(g.square() if square else g)
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        for s in sums:
            dist.all_reduce(s)
    return {t.qualname: s for t, s in zip(targets, sums, strict=True)}
