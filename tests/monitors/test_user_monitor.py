"""A user-defined monitor joins the suite: its statistic reaches stats(), its indicator the report,
its state the checkpoint."""

from __future__ import annotations

import math
from typing import Any

import torch

import chuck
from chuck.monitors import Indicator, Monitor, StepRecord, grade
from tests.conftest import make_net, run_steps


class LossRangeMonitor(Monitor):
    """Largest / smallest training loss seen: an example of a monitor a user writes."""

    name = "user"

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf

    def on_step(self, record: StepRecord) -> None:
        if record.loss is not None:
            self.lo, self.hi = min(self.lo, record.loss), max(self.hi, record.loss)

    def stats(self) -> dict[str, float]:
        return {"user.loss_range_log": math.log(self.hi / self.lo) if self.hi > 0 and self.lo > 0 else math.nan}

    def indicators(self) -> list[Indicator]:
        v = self.stats()["user.loss_range_log"]
        return [Indicator("user.loss_range", v, grade(v, 5.0, 10.0), f"loss spans {v:.2f} e-folds", "", "example")]

    def state_dict(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lo, self.hi = state["lo"], state["hi"]


def test_user_monitor_reaches_stats_report_and_checkpoint() -> None:
    model = make_net()
    mon = LossRangeMonitor()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-2), "heuristic", model=model, monitors=[mon], history=False
    )
    run_steps(model, opt, 0, 30)
    assert math.isfinite(opt.stats()["user.loss_range_log"])
    assert opt.health()["user.loss_range"].status in ("ok", "warn", "bad")
    sd = opt.state_dict()
    assert sd["chuck"]["monitors"]["user"] == {"lo": mon.lo, "hi": mon.hi}
    model2 = make_net()
    mon2 = LossRangeMonitor()
    opt2 = chuck.ChuckOptimizer(
        torch.optim.AdamW(model2.parameters(), lr=1e-2), "heuristic", model=model2, monitors=[mon2], history=False
    )
    opt2.load_state_dict(sd)
    assert (mon2.lo, mon2.hi) == (mon.lo, mon.hi)


def test_monitor_names_must_be_unique() -> None:
    import pytest

    model = make_net()

    class Clash(LossRangeMonitor):
        name = "loss"

    with pytest.raises(ValueError, match="already attached"):
        chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), monitors=[Clash()], history=False)
