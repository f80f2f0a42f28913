"""The Monitor contract, run against every monitor."""

from __future__ import annotations

import math

import pytest
import torch

import chuck
from chuck.testing import check_monitor
from tests.conftest import make_net, run_steps
from tests.monitors.test_user_monitor import LossRangeMonitor


def _trained_opt():
    model = make_net(dropout=0.1)
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-2), "heuristic", model=model, monitors=[LossRangeMonitor()], history=False
    )
    run_steps(model, opt, 0, 45, observe_every=10)
    return opt


#: every monitor a run holds: the built-in ones, the controller state, and a user's
MONITORS = [m.name for m in _trained_opt().monitors]


def test_the_suite_holds_every_kind_of_monitor() -> None:
    assert MONITORS == ["loss", "grad", "weights", "step", "act", "ctrl", "user"]


@pytest.mark.parametrize("name", MONITORS)
def test_monitor_contract(name: str) -> None:
    mon = _trained_opt().monitors[name]
    assert mon.indicators() or name == "ctrl", "the controller state is an observation source, not a health indicator"
    check_monitor(mon, fresh=_trained_opt().monitors[name])


def test_check_monitor_attaches_a_new_monitor_to_a_small_run() -> None:
    check_monitor(LossRangeMonitor())


class _Unnamed(LossRangeMonitor):
    def stats(self) -> dict[str, float]:
        return {"loss_range": 1.0}  # not prefixed with the monitor's name


def test_check_monitor_names_a_broken_rule() -> None:
    with pytest.raises(AssertionError, match="must start with 'user.'"):
        check_monitor(_Unnamed())


def test_every_observation_feature_has_a_source() -> None:
    """Every observation feature is a statistic some monitor or the controller produces."""
    opt = _trained_opt()
    stats = opt.stats()
    missing = [n for n in opt.obs_spec.names if n not in stats]
    assert not missing, f"features with no source statistic: {missing}"


@pytest.mark.parametrize(
    ("dtype", "base"),
    # float16 with SGD: AdamW's eps (1e-8) is 0 in float16, and its first step divides by it
    [(torch.bfloat16, torch.optim.AdamW), (torch.float16, torch.optim.SGD)],
)
def test_every_monitor_runs_on_a_low_precision_model(dtype, base) -> None:
    """A model held in bfloat16 or float16 (no autocast: the weights themselves) is watched like any
    other: every monitor's statistics are floats and the weights' update ratio is measured (numpy has
    no bfloat16; a norm read straight into it used to raise)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).to(dtype)
    opt = chuck.ChuckOptimizer(base(model.parameters(), lr=1e-2), "default", model=model, history=False, total_steps=60)
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        x, y = torch.randn(16, 8, generator=gen).to(dtype), torch.randint(0, 4, (16,), generator=gen)
        loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
    assert [d.source for d in opt.decisions].count("guardrail") == 0
    assert len(opt.decisions) >= 2
    stats = opt.stats()
    assert all(isinstance(v, float) for v in stats.values())
    assert math.isfinite(stats["weights.update_ratio_log10"]) and math.isfinite(stats["act.dead_fraction"])


@pytest.mark.parametrize("base", [torch.optim.AdamW, torch.optim.SGD])
def test_every_monitor_reads_complex_parameters_as_real_pairs(base) -> None:
    """Complex parameters are descended as pairs of reals; the monitors measure them so. The loss here
    depends on the imaginary parts only: a monitor that cast them to float (dropping the imaginary
    part, with a warning) saw weights that never move and gradients that are zero."""
    import warnings

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.complex(torch.zeros(64), torch.randn(64)))
    squash = torch.nn.Tanh()  # a complex activation too: the activation monitor leaves it unsampled
    opt = chuck.ChuckOptimizer(base([p], lr=1e-2), "default", model=squash, history=False, total_steps=60)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*complex.*")
        for _ in range(60):
            loss = (squash(p).imag - 0.5).pow(2).mean()
            loss.backward()
            opt.step(loss=loss)
            opt.zero_grad()
    stats = opt.stats()
    for name in ("step.hypergrad", "weights.update_ratio_log10", "weights.update_cosine"):
        assert math.isfinite(stats[name]), name
    assert stats["step.log10_update_over_dhat"] < 3  # a distance estimate exists: the sampled coordinates moved
