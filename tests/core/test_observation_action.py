"""ObservationSpec and ActionSpec: fixed spaces, clipping, bounds, rate limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from chuck.core.actions import ActionSpec, Knob
from chuck.core.observation import ObservationSpec


def test_observation_encode_is_always_inside_the_box() -> None:
    spec = ObservationSpec()
    rng = np.random.default_rng(0)
    for _ in range(50):
        stats = {n: float(v) for n, v in zip(spec.names, rng.normal(0, 100, len(spec.names)))}
        stats[spec.names[0]] = math.inf
        stats[spec.names[1]] = math.nan
        obs = spec.encode(stats)
        assert obs.dtype == np.float32 and spec.space.contains(obs)
    assert spec.encode({}).tolist() == spec._missing.tolist()


def test_observation_names_roundtrip() -> None:
    spec = ObservationSpec()
    obs = spec.space.sample()
    assert list(spec.as_dict(obs)) == spec.names
    with pytest.raises(ValueError, match="entries"):
        spec.as_dict(obs[:-1])


def _bound_spec(**kw) -> tuple[ActionSpec, torch.optim.Optimizer, nn.Module]:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    spec = ActionSpec(**kw)
    spec.bind(opt, model)
    return spec, opt, model


def test_action_rate_limit_and_bounds() -> None:
    spec, opt, model = _bound_spec(version="1")  # v1: x2 per decision, lr multiplier in [1e-3, 100]
    res = spec.apply([5.0, -5.0, 0.0, 1.0])  # out-of-range entries are clipped to [-1, 1]
    assert res.action == [1.0, -1.0, 0.0, 1.0]
    assert spec.lr_mult == pytest.approx(2.0) and spec.wd_mult == pytest.approx(0.5)
    assert model[1].p == pytest.approx(0.3)
    for _ in range(20):
        res = spec.apply([1.0, 0.0, 0.0, 1.0])
    assert spec.lr_mult == 100.0 and "lr" in res.limited
    assert model[1].p <= 0.9
    assert opt.param_groups[0]["lr"] == 1e-3  # apply() never writes the user's lr
    with pytest.raises(ValueError, match="entries"):
        spec.apply([0.0, 0.0])


def test_nan_action_holds() -> None:
    spec, _, _ = _bound_spec()
    spec.apply([math.nan, math.nan, math.nan, math.nan])
    assert spec.lr_mult == 1.0 and spec.wd_mult == 1.0 and math.isinf(spec.clip)


def test_clip_turns_on_tightens_and_turns_off() -> None:
    spec, _, _ = _bound_spec()
    for _ in range(3):
        spec.apply([0.0, 0.0, -1.0, 0.0], median_grad_norm=2.0)
    assert math.isfinite(spec.clip) and spec.clip == pytest.approx(2.0 * math.exp(5 - 3 * math.log(4)))
    for _ in range(5):
        spec.apply([0.0, 0.0, 1.0, 0.0], median_grad_norm=2.0)
    assert math.isinf(spec.clip)


def test_knobs_follow_their_dimension() -> None:
    spec, _, _ = _bound_spec()
    k = spec.register_knob(Knob("augment", 0.5, 0.1, 1.0, follows="dropout"))
    spec.apply([0.0, 0.0, 0.0, 1.0])
    assert k.value == pytest.approx(0.75)
    for _ in range(5):
        spec.apply([0.0, 0.0, 0.0, 1.0])
    assert k.value == 1.0
    with pytest.raises(ValueError, match="already registered"):
        spec.register_knob(Knob("augment", 0.5, 0.1, 1.0))
    with pytest.raises(ValueError, match="follows"):
        Knob("x", 0.5, 0.1, 1.0, follows="momentum")
    with pytest.raises(ValueError, match="low <= value"):
        Knob("x", 2.0, 0.1, 1.0)
    with pytest.raises(ValueError, match="low must be > 0, got 0.0: chuck moves a knob multiplicatively"):
        Knob("label_smoothing", 0.1, 0.0, 0.3)
    for bad in ({"high": math.inf}, {"value": math.nan}, {"low": "0.1"}, {"value": True}):
        with pytest.raises(TypeError, match=f"{next(iter(bad))} must be a finite number"):
            Knob(**({"name": "x", "value": 0.5, "low": 0.1, "high": 1.0} | bad))


def test_action_v2_reaches_decades() -> None:
    spec, _, _ = _bound_spec()
    assert spec.version == "2"
    spec.apply([1.0, 0.0, 0.0, 0.0])
    assert spec.lr_mult == pytest.approx(3.0)
    for _ in range(10):
        spec.apply([1.0, 0.0, 0.0, 0.0])
    assert spec.lr_mult == 1000.0


def test_effective_restores_even_on_error() -> None:
    spec, opt, _ = _bound_spec(version="1")
    spec.apply([1.0, 1.0, 0.0, 0.0])
    with pytest.raises(RuntimeError), spec.effective():
        assert opt.param_groups[0]["lr"] == pytest.approx(2e-3)
        assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.2)
        raise RuntimeError
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["weight_decay"] == 0.1


def test_observation_v3_reads_no_feature_whose_meaning_depends_on_the_base_optimizer() -> None:
    from chuck.core.observation import BASE_DEPENDENT, LATEST_VERSION

    v2, v3 = ObservationSpec("2"), ObservationSpec("3")
    assert LATEST_VERSION == "3" and set(v2.names) >= BASE_DEPENDENT
    assert not BASE_DEPENDENT & set(v3.names)
    assert v3.names == [n for n in v2.names if n not in BASE_DEPENDENT], "the rest, in v2's order"
    stats = dict.fromkeys(v2.names, 0.25)
    assert v3.as_dict(v3.encode(stats)) == {n: v for n, v in v2.as_dict(v2.encode(stats)).items() if n in v3.names}
