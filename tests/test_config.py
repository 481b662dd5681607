"""The config is the job: one definition of the fields, lossless recipes, up-front capability
checks, and the same masks whichever way a job is written (keywords, config, recipe, CLI)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

import prunekit as pk
from prunekit.allocation import ALLOCATIONS
from prunekit.commands._config_options import add_config_options, config_from_args
from prunekit.criteria import CRITERIA
from prunekit.demo import digits_cnn
from prunekit.granularity import GRANULARITIES
from prunekit.masks import MaskState
from prunekit.schedule import SCHEDULES
from tests.helpers import make
from tests.test_bad_input import assert_untouched, snapshot


def _examples(registry) -> list:
    return [e for name in registry for e in registry.examples(name)]


def _as_object(registry, base, example):
    from prunekit.plugin import from_value

    return from_value(example, registry, base)


# every registered plugin, written as a string and as a parameterised object
PLUGINS = {
    "granularity": [*_examples(GRANULARITIES)]
    + [pk.granularity.parse_granularity(e) for e in _examples(GRANULARITIES)],
    "criterion": [n for n in CRITERIA]
    + [_as_object(CRITERIA, pk.criteria.Criterion, e) for e in _examples(CRITERIA)],
    "scope": [n for n in ALLOCATIONS]
    + [_as_object(ALLOCATIONS, pk.allocation.Allocation, e) for e in _examples(ALLOCATIONS)],
    "schedule": [_as_object(SCHEDULES, pk.schedule.Schedule, e) for e in _examples(SCHEDULES)],
}
SELECTORS = st.one_of(
    st.none(),
    st.sampled_from([r"fc\d", "head", r"encoder\..*"]),
    st.lists(st.sampled_from([r"fc\d", "head", nn.Linear, nn.Conv2d, nn.LayerNorm]), max_size=3),
)


def _compatible(config: pk.PruneConfig) -> bool:
    try:
        config.resolve()
    except pk.PrunekitError:
        return False
    return True


@st.composite
def configs(draw) -> pk.PruneConfig:
    config = pk.PruneConfig(
        sparsity=draw(st.one_of(st.none(), st.floats(0, 0.99))),
        granularity=draw(st.sampled_from(PLUGINS["granularity"])),
        criterion=draw(st.sampled_from(PLUGINS["criterion"])),
        scope=draw(st.sampled_from(PLUGINS["scope"])),
        schedule=draw(st.sampled_from(PLUGINS["schedule"])),
        include=draw(SELECTORS),
        exclude=draw(SELECTORS),
        seed=draw(st.integers(0, 2**31)),
    )
    return config


@settings(max_examples=200, deadline=None)
@given(configs())
def test_recipes_round_trip_losslessly(config):
    if not _compatible(config):
        with pytest.raises(pk.PrunekitError):
            config.to_dict()  # an invalid config has no recipe
        return
    data = config.to_dict()
    assert pk.PruneConfig.from_dict(data) == config
    assert pk.PruneConfig.from_dict(json.loads(json.dumps(data))) == config
    assert pk.PruneConfig.from_dict(yaml.safe_load(pk.dump_recipe(config))) == config


def test_parameters_survive_the_round_trip():
    config = pk.PruneConfig(
        sparsity=0.5,
        granularity=pk.Channel(round_to=8, max_ratio=0.75),
        criterion=pk.Wanda(group="layer"),
        scope=pk.OWL(lam=0.1, m=3.0),
        exclude=[nn.Linear],
    )
    back = pk.PruneConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back.granularity == pk.Channel(round_to=8, max_ratio=0.75)
    assert back.scope == pk.OWL(lam=0.1, m=3.0)
    assert back.exclude == (nn.Linear,)  # a type again, not the regex "Linear"


def test_recipes_never_import_code(tmp_path):
    marker = tmp_path / "imported"
    evil = tmp_path / "evil_recipe_module.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\nclass Evil: pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        for entry in ({"module": "evil_recipe_module.Evil"}, {"module": "os.system"}):
            with pytest.raises(pk.ConfigError, match="allowed module type"):
                pk.PruneConfig.from_dict({"sparsity": 0.5, "exclude": [entry]})
        for criterion in ({"type": "evil_recipe_module.Evil"}, "os.system"):
            with pytest.raises(pk.UnknownChoiceError):
                pk.PruneConfig.from_dict({"sparsity": 0.5, "criterion": criterion}).resolve()
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists()
    assert "evil_recipe_module" not in sys.modules


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"sparsty": 0.5}, ["sparsty", "did you mean 'sparsity'", "valid keys"]),
        ({"sparsity": 0.5, "schedule": "cubic"}, ["cubic", "start"]),
        ({"sparsity": 0.5, "schedule": {"type": "cubic", "start": 0, "end": 9, "every": "2"}},
         ["Cubic.every", "integer"]),
        ({"sparsity": 0.5, "schedule": {"type": "iterative", "steps": 2.5}}, ["steps", "integer"]),
        ({"sparsity": 0.5, "criterion": {"type": "sparsegpt", "dmp": 0.1}},
         ["dmp", "did you mean 'damp'", "block_size"]),
        ({"sparsity": 0.5, "criterion": {"damp": 0.1}}, ["'type' key", "sparsegpt"]),
        ({"sparsity": 0.5, "scope": {"type": "owl", "lam": "big"}}, ["OWL.lam"]),
        ({"version": 99, "sparsity": 0.5}, ["version 99"]),
        (["sparsity", 0.5], ["mapping"]),
    ],
)  # fmt: skip
def test_bad_recipes_name_the_problem(data, words):
    with pytest.raises(pk.ConfigError) as info:
        pk.PruneConfig.from_dict(data).resolve()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"criterion": "sparsegpt", "granularity": "channel"}, ["sparsegpt", "channel"]),
        ({"criterion": "regression", "granularity": "head"}, ["regression", "unstructured"]),
        ({"criterion": "sparsegpt", "granularity": "block:4x4"}, ["block:4x4", "N:M"]),
        ({"scope": "owl", "granularity": "2:4", "sparsity": None}, ["owl", "2:4", "layer"]),
        ({"scope": "global", "granularity": "1:4", "sparsity": None}, ["global", "1:4"]),
        ({"critrion": "wanda"}, ["critrion", "did you mean 'criterion'"]),
    ],
)
def test_incompatible_plugins_are_refused_before_the_model_is_touched(kwargs, words):
    """Refused in resolve(): no tracing, no calibration, no example inputs needed."""
    model, _ = make("mlp")
    snap = snapshot(model)
    with pytest.raises(pk.ConfigError) as info:
        pk.prune(model, **{"sparsity": 0.5, **kwargs})
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert_untouched(model, snap)


def test_a_config_object_and_keywords_give_identical_masks():
    config = pk.PruneConfig(sparsity=0.6, granularity="block:2x8", scope="global", seed=4)
    a, _ = make("cnn")
    b, _ = make("cnn")
    c, _ = make("cnn")
    pk.prune(a, config)
    pk.prune(b, 0.6, granularity="block:2x8", scope="global", seed=4)
    pk.prune(c, pk.PruneConfig(sparsity=0.1), granularity="block:2x8", scope="global", seed=4,
             sparsity=0.6)  # fmt: skip
    for other in (b, c):
        masks = MaskState(other).state_dict()
        assert all(torch.equal(m, masks[k]) for k, m in MaskState(a).state_dict().items())


def test_sparsity_twice_and_wrong_second_argument_are_errors():
    model, _ = make("mlp")
    with pytest.raises(pk.ConfigError, match="twice"):
        pk.prune(model, 0.5, sparsity=0.5)
    with pytest.raises(pk.ConfigError, match="PruneConfig or a sparsity"):
        pk.prune(model, "0.5")


def test_pruner_takes_keyword_fields_as_the_readme_shows():
    model, _ = make("mlp")
    pruner = pk.Pruner(model, sparsity=0.5, schedule=pk.Iterative(steps=2))
    assert pruner.step() == pytest.approx(0.25) and pruner.step() == pytest.approx(0.5)
    assert pruner.sparsity == pytest.approx(0.5, abs=1e-3)


def test_prune_signature_lists_every_config_field():
    import dataclasses
    import inspect

    params = inspect.signature(pk.prune).parameters
    assert {f.name for f in dataclasses.fields(pk.PruneConfig)} <= set(params)


def test_owl_and_global_work_on_channel_groups():
    """Allocations see unit scores for every granularity: channels included."""
    from tests.structure.zoo import INPUTS, ZOO

    for scope in ("global", "owl", pk.Global(normalize="mean")):
        model, x = ZOO["llama"](), INPUTS["llama"]()
        pruner = pk.prune(model, 0.4, granularity="channel", scope=scope, example_inputs=x)
        units = sum(g.units for g in pruner.groups())
        pruned = sum(int(g.dead().sum()) for g in pruner.groups())  # every masked slice empty
        # the hidden width keeps a multiple of the 4 heads (LlamaConfig's rule): up to 3 less
        (hidden,) = [g for g in pruner.groups() if "fits" in g.info]
        assert (hidden.units - int(hidden.dead().sum())) % 4 == 0, scope
        assert 0 <= round(0.4 * units) - pruned < 4, scope


def test_a_one_shot_iterator_is_read_once_and_kept_for_two_passes():
    """owl scores every layer in a first pass, then prunes block by block in a second."""
    from tests.test_calibrate import Stack, batches

    torch.manual_seed(0)
    listed, streamed = Stack(), Stack()
    streamed.load_state_dict(listed.state_dict())
    pk.prune(listed, 0.5, criterion="wanda", scope="owl", data=batches(), exclude="head")
    pk.prune(streamed, 0.5, criterion="wanda", scope="owl", data=iter(batches()), exclude="head")
    masks = MaskState(streamed).state_dict()
    assert masks and all(
        torch.equal(m, masks[k]) for k, m in MaskState(listed).state_dict().items()
    )


def test_meta_device_model_is_refused():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(pk.TargetError, match="meta"):
        pk.prune(model, 0.5)


def test_cli_recipe_and_flags_give_bit_identical_masks(tmp_path):
    flags = ["--sparsity", "0.7", "--granularity", "block:2x2", "--scope", "global",
             "--criterion", "l2", "--exclude", "0"]  # fmt: skip
    script = Path(sys.executable).with_name("prunekit")
    torch.manual_seed(0)
    weights = tmp_path / "w.safetensors"
    save_file(digits_cnn().state_dict(), str(weights))
    model = ["prune", "prunekit.demo:digits_cnn", "--weights", str(weights)]

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(run(*model, *flags, "-o", "unused", "--print-config").stdout)
    assert pk.load_recipe(recipe).granularity == "block:2x2"
    run(*model, *flags, "-o", str(tmp_path / "a"))
    run(*model, "--config", str(recipe), "-o", str(tmp_path / "b"))
    # prune -o writes compressed weights: read them back through pk.load
    a, b = (pk.load(tmp_path / d, model=digits_cnn()).state_dict() for d in "ab")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the same masks as the Python API with those options
    reference = digits_cnn()
    reference.load_state_dict(load_file(str(weights)))
    pk.prune(reference, 0.7, granularity="block:2x2", scope="global", criterion="l2", exclude="0")
    pk.finalize(reference)
    for k, v in reference.state_dict().items():
        assert torch.equal(v == 0, a[k] == 0), k


def test_example_inputs_of_the_wrong_shape_are_a_clear_error():
    model, _ = make("cnn")
    snap = snapshot(model)
    with pytest.raises(pk.ConfigError, match="example_inputs do not fit Sequential"):
        pk.prune(model, 0.5, granularity="channel", example_inputs=torch.randn(2, 3, 6, 6))
    assert_untouched(model, snap)


def test_a_layer_the_calibration_never_reaches_is_refused_before_any_mask():
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
            self.unused = nn.Linear(8, 8)

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model = Skips()
    snap = snapshot(model)
    with pytest.raises(pk.ConfigError, match=r"unused\.weight never ran"):
        pk.prune(model, 0.5, criterion="wanda", data=[torch.randn(4, 8)])
    assert_untouched(model, snap)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], False), (["--refine"], True), (["--refine", "yes"], True), (["--refine", "off"], False)],
)
def test_cli_boolean_option_is_a_flag_and_takes_yes_or_no(flags, expected):
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    config = config_from_args(parser.parse_args(["--granularity", "2:4", *flags]))
    assert config.refine is expected


def test_cli_boolean_option_refuses_other_words(capsys):
    parser = argparse.ArgumentParser()
    add_config_options(parser)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--refine", "maybe"])
    assert exit_.value.code == 2
    assert "--refine: expected yes or no, got 'maybe'" in capsys.readouterr().err
