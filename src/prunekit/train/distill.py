"""Knowledge distillation of a pruned student from its dense teacher, masks held throughout.

The loss of one batch (:class:`Distiller`):

* **logits** (the model returns ``.logits``, or a plain tensor): KL divergence between the
  teacher's and the student's softened distributions, ``T² · KL(p_t^T ‖ p_s^T)``, averaged over
  positions (padding excluded through ``attention_mask``);
* **hidden states** otherwise (an encoder's ``last_hidden_state``): mean squared error;
* **pooled** (``target="pooled"``, sentence encoders): ``1 - cos`` between the mean-pooled (over
  ``attention_mask``) last hidden states: the sentence embedding that is judged;
* **intermediate layers** (``hidden_layers``): MSE between the outputs of the named modules, through
  a learned linear projection where a shrunk student's width differs from the teacher's;
* **task loss** where labels exist (the model's own ``.loss``, or ``loss_fn(output, batch)``):
  ``alpha · distillation + (1 - alpha) · task``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..calibrate import model_device, run_batch
from ..errors import ConfigError
from .distributed import data_parallel
from .loop import EvalFn, History, check_number, normalise, run_training

TARGETS = ("auto", "logits", "hidden", "pooled")


def output_logits(out: Any) -> torch.Tensor | None:
    """The logits of a model output: ``.logits``, or the output itself if it is a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    return getattr(out, "logits", None)


def output_hidden(out: Any) -> torch.Tensor:
    """The last hidden state of a model output (``.last_hidden_state``, the first tensor)."""
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        hidden = first_tensor(out)
    if hidden is None:
        raise ConfigError(f"the model's output ({type(out).__name__}) holds no tensor to distil")
    return hidden


def first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            t = first_tensor(o)
            if t is not None:
                return t
    return None


def _position_weights(kwargs: dict, like: torch.Tensor) -> torch.Tensor | None:
    """``attention_mask`` as ``[B, T]`` float weights if it matches ``like``'s leading dims."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and like.dim() >= 3 and tuple(mask.shape) == like.shape[:2]:
        return mask.to(like.device, torch.float32)
    return None


def _masked_mean(per_position: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return per_position.mean()
    return (per_position * weights).sum() / weights.sum().clamp_min(1.0)


def kl_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, weights: torch.Tensor | None
) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` per position (summed over classes), averaged."""
    if student.shape != teacher.shape:
        raise ConfigError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} "
            "differ in shape"
        )
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    per_position = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)
    return _masked_mean(per_position, weights) * temperature**2


def mse_loss(
    student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """Mean squared error per position (averaged over features), averaged over positions."""
    if student.shape != teacher.shape:
        raise ConfigError(
            f"student hidden state {tuple(student.shape)} and teacher's {tuple(teacher.shape)} "
            "differ in shape"
        )
    per_position = (student.float() - teacher.float()).square()
    per_position = per_position.mean(-1) if weights is not None else per_position
    return _masked_mean(per_position, weights)


def mean_pool(hidden: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``[B, T, H]`` hidden states averaged over the positions of ``weights`` ``[B, T]`` (all
    positions when None): ``[B, H]``, the sentence embedding of a sentence encoder."""
    w = torch.ones(hidden.shape[:2], device=hidden.device) if weights is None else weights
    w = w.unsqueeze(-1)  # [B, T, 1]
    return (hidden.float() * w).sum(1) / w.sum(1).clamp_min(1.0)


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` of ``[B, H]`` embeddings, averaged over the batch."""
    if student.shape != teacher.shape or student.dim() != 2:
        raise ConfigError(
            f"pooled distillation needs equal [batch, hidden] embeddings, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def pooled_cosine_loss(
    student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """``1 - cos`` of the mean-pooled ``[B, T, H]`` hidden states (over ``weights`` ``[B, T]``),
    averaged over the batch."""
    if student.shape != teacher.shape or student.dim() != 3:
        raise ConfigError(
            f"pooled distillation needs equal [batch, tokens, hidden] states, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    return cosine_loss(mean_pool(student, weights), mean_pool(teacher, weights))


def _layer_map(
    student: nn.Module, teacher: nn.Module, layers: Sequence[str] | Mapping[str, str] | None
) -> dict[str, str]:
    if layers is None:
        return {}
    if isinstance(layers, str):
        layers = [layers]
    pairs = dict(layers) if isinstance(layers, Mapping) else {name: name for name in layers}
    s_names, t_names = dict(student.named_modules()), dict(teacher.named_modules())
    for s, t in pairs.items():
        for name, names, who in ((s, s_names, "student"), (t, t_names, "teacher")):
            if name not in names:
                raise ConfigError(f"hidden layer {name!r} names no module of the {who}")
    return pairs


@contextlib.contextmanager
def _capture(model: nn.Module, names: Iterable[str], into: dict[str, torch.Tensor]) -> Iterator:
    """Record the first tensor output of each named module of ``model`` into ``into``."""
    modules = dict(model.named_modules())
    handles = []
    for name in names:

        def hook(module: nn.Module, args: tuple, out: Any, name: str = name) -> None:
            into[name] = first_tensor(out)

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Distiller(nn.Module):
    """The distillation loss of ``student`` against ``teacher`` for one batch.

    Holds the learned projections of intermediate layers whose widths differ (its only
    parameters); the student and teacher are referenced, not registered as submodules.
    ``inputs(batch)`` maps a raw batch to the model inputs (default: the batch itself);
    ``loss_fn(student_output, batch)`` gives the task loss (default: the model's own ``.loss``).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        *,
        temperature: float = 2.0,
        alpha: float = 0.5,
        hidden_layers: Sequence[str] | Mapping[str, str] | None = None,
        hidden_weight: float = 1.0,
        target: str = "auto",
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        inputs: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__()
        for name, m in (("student", student), ("teacher", teacher)):
            if not isinstance(m, nn.Module):
                raise ConfigError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
        if student is teacher:
            raise ConfigError("student and teacher are the same module: pass a copy of the dense")
        if target not in TARGETS:
            raise ConfigError(f"unknown distillation target {target!r}; valid: {TARGETS}")
        self.temperature = check_number("temperature", temperature, 1e-3, 1e3)
        self.alpha = check_number("alpha", alpha, 0.0, 1.0)
        self.hidden_weight = check_number("hidden_weight", hidden_weight, 0.0)
        self.layers = _layer_map(student, teacher, hidden_layers)
        self.target = target
        self.loss_fn = loss_fn
        self.inputs = inputs
        self.__dict__["student"] = student  # referenced, not a submodule
        self.__dict__["teacher"] = teacher
        self.projections = nn.ModuleDict()

    @torch.no_grad()
    def teacher_targets(self, batch: Any) -> dict[str, torch.Tensor]:
        """What the loss compares the student with, from one teacher forward of ``batch``:
        ``logits``, ``hidden`` (last hidden state) or ``pooled`` (its mean over
        ``attention_mask``), and ``layer:NAME`` per intermediate layer. The teacher is frozen, so
        these may be computed once per batch and reused (``distill(..., cache_teacher=True)``)."""
        args, kwargs = normalise(batch, self.inputs)
        captured: dict[str, torch.Tensor] = {}
        device = model_device(self.teacher)
        full = torch.autocast(device.type, enabled=False)  # exact targets under mixed precision
        with full, _capture(self.teacher, self.layers.values(), captured):
            was = self.teacher.training
            self.teacher.eval()
            out = run_batch(self.teacher, (args, kwargs), 0, device)
            self.teacher.train(was)
        targets = {f"layer:{name}": t for name, t in captured.items()}
        logits = output_logits(out) if self.target in ("auto", "logits") else None
        if logits is not None:
            targets["logits"] = logits
        elif self.target == "pooled":
            hidden = output_hidden(out)
            targets["pooled"] = mean_pool(hidden, _position_weights(kwargs, hidden))
        else:
            targets["hidden"] = output_hidden(out)
        return targets

    def _student_forward(self, batch: Any, student: nn.Module | None) -> tuple[Any, dict, dict]:
        args, kwargs = normalise(batch, self.inputs)
        captured: dict[str, torch.Tensor] = {}
        with _capture(self.student, self.layers, captured):
            out = run_batch(student or self.student, (args, kwargs), 0, model_device(self.student))
        return out, captured, kwargs

    @torch.no_grad()
    def prepare(self, batch: Any) -> None:
        """Create the projections that a shrunk student needs (one probe forward of ``batch``)."""
        targets = self.teacher_targets(batch)
        _, s_hidden, _ = self._student_forward(batch, None)
        device = model_device(self.student)
        for s_name, t_name in self.layers.items():
            s, t = s_hidden[s_name], targets[f"layer:{t_name}"]
            if s is None or t is None:
                raise ConfigError(f"hidden layer {s_name!r} returned no tensor")
            key = s_name.replace(".", "__")
            if s.shape[-1] != t.shape[-1] and key not in self.projections:
                self.projections[key] = nn.Linear(s.shape[-1], t.shape[-1], bias=False).to(device)

    def objective(
        self, data: Iterable[Any], forward: nn.Module | None, cache_teacher: bool = False
    ) -> tuple[Iterable[Any], Callable[[Any], torch.Tensor]]:
        """What the training loop iterates over and the loss of one of its items: ``data`` and
        :meth:`loss`, or with ``cache_teacher`` the indices of ``data`` (a list or tuple) and a loss
        that runs the teacher on a batch the first time only and reuses its targets after."""
        if not cache_teacher:
            return data, lambda batch: self.loss(batch, forward)[0]
        if not isinstance(data, (list, tuple)):
            raise ConfigError(
                f"cache_teacher=True keeps the teacher's targets per batch, so data must be a list "
                f"or tuple of batches (the same batches every pass), got {type(data).__name__}"
            )
        cache: dict[int, dict[str, torch.Tensor]] = {}

        def loss_of(index: int) -> torch.Tensor:
            if index not in cache:
                cache[index] = self.teacher_targets(data[index])
            return self.loss(data[index], forward, cache[index])[0]

        return range(len(data)), loss_of

    def loss(
        self,
        batch: Any,
        student: nn.Module | None = None,
        targets: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss of ``batch`` and its parts (``kd``, ``hidden``, ``task``) as floats.

        ``student`` runs the forward instead of the student itself: a wrapper of it (DDP);
        ``targets``: :meth:`teacher_targets` of ``batch`` computed earlier (else the teacher
        runs)."""
        total, parts, _ = self.compute(batch, student, targets)
        return total, parts

    def compute(
        self,
        batch: Any,
        student: nn.Module | None = None,
        targets: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float], Any]:
        """:meth:`loss`, plus the student's output."""
        if targets is None:
            targets = self.teacher_targets(batch)
        s_out, s_hidden, kwargs = self._student_forward(batch, student)
        device = model_device(self.student)
        s_logits = output_logits(s_out) if self.target in ("auto", "logits") else None
        if s_logits is not None:
            if "logits" not in targets:
                raise ConfigError("the student returns logits but the teacher does not")
            w = _position_weights(kwargs, s_logits)
            kd = kl_loss(s_logits, targets["logits"].to(device), self.temperature, w)
        elif self.target == "logits":
            raise ConfigError("target='logits' but the student's output has no logits")
        elif "logits" in targets:
            raise ConfigError("the teacher returns logits but the student does not")
        else:
            s_h = output_hidden(s_out)
            w = _position_weights(kwargs, s_h)
            if self.target == "pooled":
                kd = cosine_loss(mean_pool(s_h, w), targets["pooled"].to(device))
            else:
                kd = mse_loss(s_h, targets["hidden"].to(device), w)
        parts = {"kd": float(kd.detach())}
        total = kd
        if self.layers:
            terms = []
            for s_name, t_name in self.layers.items():
                s, t = s_hidden[s_name], targets[f"layer:{t_name}"].to(device)
                key = s_name.replace(".", "__")
                if key in self.projections:
                    s = self.projections[key](s)
                elif s.shape[-1] != t.shape[-1]:
                    raise ConfigError(
                        f"hidden layer {s_name!r} is {s.shape[-1]} wide, the teacher's "
                        f"{t.shape[-1]}: call prepare(batch) first to create its projection"
                    )
                terms.append(mse_loss(s, t, _position_weights(kwargs, s)))
            hidden = torch.stack(terms).mean()
            parts["hidden"] = float(hidden.detach())
            total = total + self.hidden_weight * hidden
        task = self._task_loss(s_out, batch)
        if task is not None:
            parts["task"] = float(task.detach())
            total = self.alpha * total + (1.0 - self.alpha) * task
        return total, parts, s_out

    def _task_loss(self, out: Any, batch: Any) -> torch.Tensor | None:
        loss = self.loss_fn(out, batch) if self.loss_fn is not None else getattr(out, "loss", None)
        if loss is None:
            return None
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ConfigError("loss_fn must return a scalar tensor")
        return loss.reshape(())


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Iterable[Any],
    *,
    steps: int,
    lr: float = 1e-4,
    temperature: float = 2.0,
    alpha: float = 0.5,
    hidden_layers: Sequence[str] | Mapping[str, str] | None = None,
    hidden_weight: float = 1.0,
    target: str = "auto",
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    inputs: Callable[[Any], Any] | None = None,
    teacher_device: str | torch.device | None = None,
    weight_decay: float = 0.0,
    warmup: int | None = None,
    max_grad_norm: float | None = 1.0,
    eval_fn: EvalFn | None = None,
    eval_every: int | None = None,
    after_step: Callable[[int], object] | None = None,
    cpu_budget: float | None = None,
    dropout: bool = True,
    cache_teacher: bool = False,
    autocast: torch.dtype | None = None,
    seed: int = 0,
    progress: bool = False,
) -> History:
    """Train the (pruned) ``student`` against the dense ``teacher`` for ``steps`` AdamW steps.

    ``data`` is an iterable of batches, as for calibration (tensors, tuples of arguments, dicts such
    as ``input_ids``/``attention_mask``/``labels``), cycled as needed. The teacher runs in eval mode
    without gradients, on its own device (``teacher_device`` moves it there), and the batches are
    moved to each model's device. The student's masks hold throughout. Loss terms: see the module
    docstring; ``target`` forces ``"logits"`` (KL), ``"hidden"`` (MSE) or ``"pooled"`` (cosine of
    mean-pooled embeddings). ``eval_fn(student, step)`` runs every ``eval_every`` steps and at the
    end; ``cpu_budget`` (CPU seconds) may end training early; ``dropout=False`` trains the student
    with its dropout off. ``cache_teacher=True`` runs the teacher once per batch of ``data`` (a
    list or tuple, fixed) and reuses its targets (:meth:`Distiller.teacher_targets`: pooled
    embeddings, hidden states or logits, and the intermediate layers) on later passes, in memory;
    the first pass, which runs the teacher, counts towards ``cpu_budget``.
    ``autocast=torch.bfloat16`` trains the student in mixed precision (the teacher's targets stay
    float32). Under
    ``torch.distributed`` the student trains under DDP (gradients averaged across ranks). The same
    ``seed`` and data give the same weights. Returns the :class:`~prunekit.train.loop.History`.
    """
    distiller = Distiller(
        student,
        teacher,
        temperature=temperature,
        alpha=alpha,
        hidden_layers=hidden_layers,
        hidden_weight=hidden_weight,
        target=target,
        loss_fn=loss_fn,
        inputs=inputs,
    )
    items, loss_of = distiller.objective(data, data_parallel(student), cache_teacher)
    if teacher_device is not None:
        teacher.to(teacher_device)
    if distiller.layers:
        first = next(iter(data), None)
        if first is None:
            raise ConfigError("data is empty")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            distiller.prepare(first)
    return run_training(
        student,
        items,
        steps,
        loss_of,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        max_grad_norm=max_grad_norm,
        extra_params=distiller.projections.parameters(),
        seed=seed,
        progress=progress,
        eval_fn=eval_fn,
        eval_every=eval_every,
        after_step=after_step,
        cpu_budget=cpu_budget,
        dropout=dropout,
        autocast=autocast,
        label="distilling",
    )
