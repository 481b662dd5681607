"""Schedules: one-shot, iterative and Zhu & Gupta's cubic."""

from __future__ import annotations

import pytest

import prunekit as pk
from tests.helpers import make


def trajectory(schedule, final, steps):
    return {t: s for t in range(steps) if (s := schedule.sparsity_at(t, final)) is not None}


def test_cubic_matches_formula_and_reaches_final():
    sched = pk.Cubic(start=10, end=110, every=10)
    traj = trajectory(sched, 0.9, 200)
    assert sorted(traj) == list(range(10, 111, 10))
    for t, s in traj.items():
        assert s == pytest.approx(0.9 * (1 - (1 - (t - 10) / 100) ** 3))
    assert traj[110] == pytest.approx(0.9)
    values = [traj[t] for t in sorted(traj)]
    assert values == sorted(values)


def test_cubic_hits_end_even_off_the_grid():
    traj = trajectory(pk.Cubic(start=0, end=25, every=10), 0.8, 40)
    assert sorted(traj) == [0, 10, 20, 25]
    assert traj[25] == pytest.approx(0.8)


def test_iterative_equal_increments():
    traj = trajectory(pk.Iterative(steps=4, every=3, start=2), 0.8, 30)
    assert traj == pytest.approx({2: 0.2, 5: 0.4, 8: 0.6, 11: 0.8})


def test_one_shot():
    assert trajectory(pk.OneShot(at=5), 0.5, 10) == {5: 0.5}


def test_gradual_pruner_follows_schedule():
    model, _ = make("mlp")
    pruner = pk.Pruner(model, pk.PruneConfig(sparsity=0.9, schedule=pk.Cubic(0, 20, every=5)))
    seen = []
    for _ in range(25):
        applied = pruner.step()
        if applied is not None:
            seen.append(round(pruner.sparsity, 3))
    assert seen == sorted(seen) and len(seen) == 5
    assert seen[-1] == pytest.approx(0.9, abs=1e-3)


def test_gradual_nm_passes_through_wider_patterns():
    model, _ = make("mlp")
    pruner = pk.Pruner(model, pk.PruneConfig(granularity="2:8", schedule=pk.Iterative(steps=3)))
    seen = []
    for _ in range(3):
        pruner.step()
        seen.append(pruner.sparsity)
    assert seen == pytest.approx([0.25, 0.5, 0.75])
    assert all(r.nm_valid for r in pk.report(model).layers)


@pytest.mark.parametrize(
    "make_schedule",
    [
        lambda: pk.Cubic(start=5, end=5),
        lambda: pk.Cubic(start=0, end=10, every=0),
        lambda: pk.Iterative(steps=0),
        lambda: pk.OneShot(at=-1),
        lambda: pk.Cubic(start=0, end=10, initial=1.0),
    ],
)
def test_bad_schedules(make_schedule):
    with pytest.raises(pk.ConfigError):
        make_schedule()
