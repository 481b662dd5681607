"""Head pruning across Hugging Face families: build each from a tiny config (random weights),
prune 50% of its heads, shrink (verified against the masked model), save, then load in ONE fresh
process from the checkpoint alone (``pk.load(DIR)``: the saved config + shape manifest) and
compare outputs exactly; also try plain ``transformers`` ``from_pretrained`` on a
``save_pretrained`` folder. Prints one row per family.

Run from the repository root: ``PYTHONPATH=src python tests/structure/heads_sweep.py [names]``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import prunekit as pk  # noqa: E402
from prunekit.structure.graph import call_model, flatten  # noqa: E402


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(2)


def ids(n: int = 8) -> Callable[[], dict]:
    return lambda: {"input_ids": torch.randint(3, 64, (2, n), generator=_gen())}


def seq2seq(n: int = 8) -> Callable[[], dict]:
    def make() -> dict:
        g = _gen()
        return {
            "input_ids": torch.randint(3, 64, (2, n), generator=g),
            "decoder_input_ids": torch.randint(3, 64, (2, 5), generator=g),
        }

    return make


def pixels(size: int = 32, channels: int = 3) -> Callable[[], Any]:
    return lambda: torch.randn(2, channels, size, size, generator=_gen())


def waveform(n: int = 400) -> Callable[[], Any]:
    return lambda: torch.randn(2, n, generator=_gen())


def features(**shapes: tuple[int, ...]) -> Callable[[], dict]:
    def make() -> dict:
        g = _gen()
        out = {}
        for k, s in shapes.items():
            if k.endswith("ids"):
                out[k] = torch.randint(3, 64, s, generator=g)
            else:
                out[k] = torch.randn(*s, generator=g)
        return out

    return make


TEXT = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 64}  # fmt: skip
LLAMA = {**TEXT, "num_key_value_heads": 2, "pad_token_id": 0, "bos_token_id": 0,
         "eos_token_id": 0}  # fmt: skip
VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 64, "image_size": 32, "patch_size": 8}  # fmt: skip
SEQ2SEQ = {"vocab_size": 64, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
           "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64,
           "decoder_ffn_dim": 64, "max_position_embeddings": 64, "pad_token_id": 1,
           "decoder_start_token_id": 2}  # fmt: skip
AUDIO = {"vocab_size": 16, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64, "conv_dim": (16, 16), "conv_stride": (5, 2),
         "conv_kernel": (10, 3), "num_conv_pos_embeddings": 16,
         "num_conv_pos_embedding_groups": 4}  # fmt: skip

#: family -> (transformers class, config keywords, example inputs)
FAMILIES: dict[str, tuple[str, dict, Callable[[], Any]]] = {
    # the four that had no head adapter, and a stochastic one
    "deberta": ("DebertaForMaskedLM", {**TEXT, "relative_attention": True,
                "pos_att_type": ["p2c", "c2p"], "max_relative_positions": 8}, ids()),
    "convbert": ("ConvBertForMaskedLM", {**TEXT, "num_attention_heads": 8, "embedding_size": 32, "head_ratio": 2,
                 "conv_kernel_size": 3}, ids()),
    "xlnet": ("XLNetLMHeadModel", {"vocab_size": 64, "d_model": 32, "n_layer": 2, "n_head": 4,
              "d_inner": 64}, ids()),
    "funnel": ("FunnelForMaskedLM", {"vocab_size": 64, "block_sizes": [1, 1], "d_model": 32,
               "n_head": 4, "d_head": 8, "d_inner": 64}, ids()),
    "vit_mae": ("ViTMAEModel", VISION, pixels()),
}  # fmt: skip


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _tensors(out: Any) -> list[torch.Tensor]:
    return [t for t in flatten(out) if isinstance(t, torch.Tensor)]


def build(name: str) -> tuple[torch.nn.Module, Any]:
    import transformers

    cls_name, cfg, inputs = FAMILIES[name]
    cls = getattr(transformers, cls_name)
    torch.manual_seed(0)
    return cls(cls.config_class(**cfg)).eval(), inputs()


def prune_heads(name: str, base: Path) -> dict[str, Any]:
    """One family's row (without the fresh-process reload, filled in later)."""
    import transformers

    row: dict[str, Any] = {"name": name}
    try:
        model, x = build(name)
    except Exception as e:  # a config this transformers version refuses
        row["result"] = f"not built: {type(e).__name__}: {str(e)[:80]}"
        return row
    before = _params(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pk.prune(model, 0.5, granularity="head", example_inputs=x)
            small = pk.shrink(model, x)
        except pk.PrunekitError as e:
            row["result"] = f"refused: {type(e).__name__}: {e}"
            return row
    stays = [str(w.message) for w in caught if "heads of" in str(w.message)]
    row["params"] = _params(small) / before
    row["stays"] = stays
    with torch.no_grad():
        row["expected"] = _tensors(call_model(small.eval(), x))
    pk.save(small, base / name)
    try:
        small.save_pretrained(base / f"{name}-hf")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = getattr(transformers, type(small).__name__).from_pretrained(base / f"{name}-hf")
        with torch.no_grad():
            got = _tensors(call_model(plain.eval(), x))
        same = all(torch.equal(a, b) for a, b in zip(row["expected"], got, strict=True))
        row["plain"] = "same outputs" if same else "DIFFERENT outputs"
    except Exception as e:  # transformers refuses the shrunk shapes
        row["plain"] = "refuses (shapes)" if "mismatch" in str(e) else f"{type(e).__name__}"
    return row


_RELOAD = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
import prunekit as pk
from tests.structure.heads_sweep import FAMILIES, _tensors
from prunekit.structure.graph import call_model
for name in {names!r}:
    model = pk.load({base!r} + "/" + name)  # the checkpoint alone: config + shape manifest
    with torch.no_grad():
        out = _tensors(call_model(model.eval(), FAMILIES[name][2]()))
    torch.save(out, {base!r} + f"/{{name}}.pt")
"""


def sweep(names: list[str]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rows = [prune_heads(n, base) for n in names]
        saved = [r["name"] for r in rows if "params" in r]
        code = _RELOAD.format(root=str(ROOT), base=str(base), names=saved)
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        for r in rows:
            if "params" not in r:
                continue
            got = torch.load(base / f"{r['name']}.pt", weights_only=True)
            same = len(got) == len(r["expected"]) and all(
                torch.equal(a, b) for a, b in zip(r["expected"], got, strict=True)
            )
            r["result"] = (
                "works"
                if same and not r["stays"]
                else ("reload DIFFERS" if not same else "works, some heads stay")
            )
    return rows


if __name__ == "__main__":
    import transformers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    rows = sweep(sys.argv[1:] or list(FAMILIES))
    print(f"{'family':14s} {'params':>6s}  {'result':24s} plain transformers")
    for r in rows:
        p = f"{r['params']:.3f}" if "params" in r else "-"
        print(f"{r['name']:14s} {p:>6s}  {r['result']:24s} {r.get('plain', '')}")
        for s in r.get("stays", []):
            print(f"{'':14s} {s}")
