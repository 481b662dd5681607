"""benchmarks/recovery.py judges distillation on text it never trains on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from prunekit.evaluate import (
    CALIBRATION_MODULES,
    EVALUATION_MODULES,
    docstring_corpus,
    sentences,
)

_spec = importlib.util.spec_from_file_location(
    "recovery_bench", Path(__file__).parents[1] / "benchmarks" / "recovery.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_training_text_is_disjoint_from_the_evaluation_text():
    def package(name: str) -> str:
        return name.split(".")[0]

    evaluation = {package(m) for m in EVALUATION_MODULES}
    assert not {package(m) for m in bench.TRAINING_MODULES + CALIBRATION_MODULES} & evaluation
    held_out = sentences(docstring_corpus(EVALUATION_MODULES))
    calibration = bench.training_sentences(False, held_out)
    extended = bench.training_sentences(True, held_out)
    assert not set(extended) & set(held_out)
    # the calibration modules share a few sentences with the evaluation corpus: dropped
    shared = set(sentences(docstring_corpus(CALIBRATION_MODULES))) & set(held_out)
    assert shared and not shared & set(calibration)
    assert set(calibration) < set(extended) and len(extended) > 1.5 * len(calibration)


def test_the_one_shot_calibration_text_holds_no_evaluation_sentence():
    held_out = sentences(docstring_corpus(EVALUATION_MODULES))
    raw = "\n\n".join(docstring_corpus(CALIBRATION_MODULES))
    text = "\n\n".join(bench.calibration_text(held_out))
    inside = [s for s in held_out if s in raw]
    assert inside  # the raw calibration docstrings do contain some
    assert not [s for s in held_out if s in text]
    assert len(text) > 0.99 * len(raw)  # only those were cut
