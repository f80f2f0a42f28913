"""Starting learning rates: the committed best-lr cache, its staleness, and the three-regime draw."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest

from chuck import zoo
from chuck.zoo import calibrate, starting_lr
from chuck.zoo.starting_lr import LR_REGIMES, OPTIMIZER_LR_OFFSET

BUILTIN = zoo.list_tasks("train") + zoo.list_tasks("validation") + zoo.list_tasks("test")


def test_committed_cache_covers_every_family_with_a_fresh_key() -> None:
    entries = json.loads(starting_lr.CACHE_PATH.read_text())["tasks"]
    for tid in BUILTIN:
        task = zoo.get_task(tid)
        assert tid in entries, f"{tid}: no entry; run `python -m chuck.zoo.calibrate`"
        assert entries[tid]["key"] == task.calibration_key, f"{tid}: stale entry; rerun the calibration"
        assert 1e-6 <= entries[tid]["best_lr"] <= 10.0
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a fresh entry never falls back
            assert task.best_lr == entries[tid]["best_lr"]


@pytest.fixture
def scratch_cache(tmp_path, monkeypatch):
    """A cache file holding one fresh entry, for tabular.wine_mlp at 0.0123, used instead of the committed one."""
    wine = zoo.get_task("tabular.wine_mlp")
    path = tmp_path / "best_lr.json"
    path.write_text(json.dumps({"tasks": {wine.id: {"key": wine.calibration_key, "best_lr": 0.0123}}}))
    monkeypatch.setattr(starting_lr, "CACHE_PATH", path)
    starting_lr.reload_cache()
    yield path
    starting_lr.reload_cache()


def _variant(task_id: str, **changes):
    """A copy of a built-in family with some attributes changed, not registered."""
    task = zoo.get_task(task_id)
    return type("Variant", (type(task),), changes)()


def test_a_changed_budget_makes_the_entry_stale(scratch_cache) -> None:
    base = zoo.get_task("tabular.wine_mlp")
    assert base.best_lr == 0.0123
    changed = _variant("tabular.wine_mlp", budget=base.budget + 1)
    assert changed.id == base.id and changed.calibration_key != base.calibration_key
    with pytest.warns(UserWarning, match="stale best-lr cache entry"):
        assert changed.best_lr == starting_lr.FALLBACK_LR
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per family and key, not at every episode
        assert changed.best_lr == starting_lr.FALLBACK_LR


def test_a_changed_search_space_makes_the_entry_stale(scratch_cache) -> None:
    base = zoo.get_task("tabular.wine_mlp")
    changed = _variant("tabular.wine_mlp", space=dataclasses.replace(base.space, widths=(7,)))
    assert changed.calibration_key != base.calibration_key
    with pytest.warns(UserWarning, match="stale"):
        assert changed.best_lr == starting_lr.FALLBACK_LR
    # the key depends on the values only, not on the object or tuple-vs-list spelling
    same = _variant("tabular.wine_mlp", space=dataclasses.replace(base.space, widths=list(base.space.widths)))
    assert same.calibration_key == base.calibration_key


def test_a_missing_entry_falls_back_with_a_warning(scratch_cache) -> None:
    unknown = _variant("tabular.wine_mlp", id="inhouse.never_calibrated")
    with pytest.warns(UserWarning, match="no best-lr cache entry"):
        assert unknown.best_lr == starting_lr.FALLBACK_LR


@pytest.mark.parametrize("optimizer", ["AdamW", "SGD"])
def test_each_regime_gets_a_third_of_the_starts(optimizer: str) -> None:
    rng = np.random.default_rng(0)
    best, n = 3e-3, 6000
    draws = [starting_lr.draw_lr(rng, best, optimizer) for _ in range(n)]
    counts = {r: sum(1 for _, reg in draws if reg == r) for r in LR_REGIMES}
    # binomial sd of a third over 6000 draws is 0.006: 0.03 is a 5-sigma tolerance
    for regime, c in counts.items():
        assert abs(c / n - 1 / 3) < 0.03, (regime, counts)
    for lr, regime in draws:
        lo, hi = LR_REGIMES[regime]
        d = math.log10(lr / best) - OPTIMIZER_LR_OFFSET[optimizer]
        assert lo - 1e-9 <= d <= hi + 1e-9
        assert starting_lr.regime_of(lr, best, optimizer) == regime
    decades = np.log10([lr for lr, _ in draws]) - math.log10(best) - OPTIMIZER_LR_OFFSET[optimizer]
    assert decades.min() < -1.9 and decades.max() > 1.9  # the whole +-2 decades are reached


def test_sample_config_draws_around_the_family_best_lr() -> None:
    task = zoo.get_task("cv.digits_mlp")
    rng = np.random.default_rng(1)
    cfgs = [task.sample_config(rng) for _ in range(1500)]
    assert {c.lr_regime for c in cfgs} == {"low", "near", "high"}
    for c in cfgs:
        assert starting_lr.regime_of(c.lr, task.best_lr, c.optimizer) == c.lr_regime
    near = [c for c in cfgs if c.lr_regime == "near" and c.optimizer == "AdamW"]
    assert near and all(abs(math.log10(c.lr / task.best_lr)) <= 0.5 for c in near)


def test_refine_moves_within_the_grid_spacing() -> None:
    lrs = [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2]
    assert calibrate.refine(lrs, [0.0, -1.0, -2.0, -1.0, 0.0]) == pytest.approx(1e-3, rel=0.01)  # symmetric
    skewed = calibrate.refine(lrs, [0.0, -1.0, -2.0, -1.9, 0.0])
    assert 1e-3 < skewed <= 10 ** (-3 + 0.25) * 1.001
    assert calibrate.refine(lrs, [-3.0, -1.0, 0.0, 0.0, 0.0]) == 1e-4  # at the edge: no extrapolation
    assert calibrate.score(1.0, math.inf) == calibrate.score(1.0, 1e9) == math.log(calibrate.WORST_RATIO)


def test_calibrate_writes_a_fresh_entry(tmp_path) -> None:
    """The script end to end on a registered user task with a tiny budget, into a scratch file."""
    import torch
    from torch import nn

    class Line(zoo.Task):
        """y = 3x fitted by a linear model. Axis: test fixture."""

        id, domain, budget = "inhouse.line", "inhouse", 20
        space = zoo.SearchSpace(optimizers=("AdamW",), norms=("none",))

        def build(self, config: zoo.TaskConfig) -> zoo.TaskInstance:
            x = torch.linspace(-1, 1, 64).unsqueeze(1)
            model = nn.Linear(1, 1)
            opt = zoo.make_optimizer(config.optimizer, model.parameters(), config.lr, 0.0)
            return zoo.SupervisedInstance(
                model,
                opt,
                config,
                (x, 3 * x[:, 0]),
                (x, 3 * x[:, 0]),
                lambda o, t: ((o.squeeze(1) - t) ** 2).mean(),
                1.0,
                accuracy=False,
            )

    out = tmp_path / "best_lr.json"
    zoo.register_task(Line, replace=True)
    try:
        assert calibrate.main(["--tasks", "inhouse.line", "--instances", "1", "--lrs", "1e-4,1e-2,1", "--output", str(out)]) == 0
        entry = json.loads(out.read_text())["tasks"]["inhouse.line"]
        task = zoo.get_task("inhouse.line")
        assert entry["key"] == task.calibration_key and entry["grid_best_lr"] in (1e-2, 1.0)
        assert starting_lr.cache_entry("inhouse.line", task.calibration_key, out) == entry
        assert starting_lr.lookup_best_lr("inhouse.line", task.calibration_key, out) == entry["best_lr"]
    finally:
        zoo.unregister_task("inhouse.line")
        starting_lr.reload_cache()
