"""The policies still see what they were chosen on.

The fixture holds every decision's observation of one fixed run under prior@3, recorded with the
code at commit 0f6343d, on observation spec v2 (the observation code on which the prior's versions and the PPO snapshots
were chosen and evaluated; the default then shipped as prior@3 with a zero residual, which acts
exactly as prior@3). Later changes to the monitors, the observation spec or the action path were
made for speed only; this test fails if one of them changes a value a policy reads. (It runs
prior@3, not ``"default"``: a later default with a warm-up takes a different path through the same
code. prior@3 is prior@10 without the warm-up: its version lives in experiments/prior_variants.py,
the rule it runs here is the product's.) The run re-seeds after building the optimizer, so what a policy draws from torch's global
generator when it loads does not change the run. Recorded with
``PYTHONPATH=<0f6343d's packages> python -c "from tests.policies.test_default_inputs import _observations ..."``
(see ``record()``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

import chuck
from chuck.policies.prior import PRIOR_10, StepSizePrior

FIXTURE = Path(__file__).parent / "fixtures" / "default_inputs_0f6343d.json"
#: Features of the form ratio - 1 (Prechelt's GL = val / best - 1): near 0 a float-level change of the
#: ratio is a large relative change of the feature (this session's CPU: GL 0.0030460 against 0.0030462,
#: the ratio equal to 1e-7), so these are compared as the ratio.
RATIO_MINUS_ONE = {"loss.overfit_gl"}
#: prior@3: the step-size rule with its cooldown and validation guard, no warm-up, no raise gate.
PRIOR_3 = dataclasses.replace(PRIOR_10, version="3", warmup=None)


def _observations() -> list[dict[str, float]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 3))
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=3e-3),
        StepSizePrior("2", config=PRIOR_3),
        model=model,
        total_steps=240,
        history=False,
    )
    torch.manual_seed(1)  # the data and dropout draws, whatever building the policy drew
    x, y = torch.randn(512, 8), torch.randint(0, 3, (512,))
    for step in range(240):
        idx = torch.randint(0, 512, (32,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
        if step % 40 == 39:
            with torch.no_grad():
                opt.observe(val_loss=float(torch.nn.functional.cross_entropy(model(x[:128]), y[:128])))
    return [{k: float(v) for k, v in d.observation.items()} for d in opt.decisions if d.source != "guardrail"]


def record() -> None:
    """Write the fixture with whatever chuck is importable (run it against the code at 0f6343d)."""
    FIXTURE.write_text(json.dumps(_observations(), indent=1, allow_nan=True) + "\n")


def test_the_observation_code_reads_what_it_read_at_0f6343d() -> None:
    recorded = json.loads(FIXTURE.read_text())
    now = _observations()
    assert len(now) == len(recorded) == 12
    for i, (a, b) in enumerate(zip(recorded, now)):
        assert a.keys() == b.keys(), f"decision {i}: the observation's features changed"
        for k, v in a.items():
            # bitwise on the machine that recorded it; a tolerance for other CPUs' float kernels
            w = b[k]
            if k in RATIO_MINUS_ONE:  # compare the ratio the feature is computed from, not its small remainder
                v, w = v + 1.0, w + 1.0
            same = (math.isnan(v) and math.isnan(w)) or math.isclose(v, w, rel_tol=1e-5, abs_tol=1e-7)
            assert same, f"decision {i}: {k} was {a[k]}, is {b[k]}"


def test_the_default_acts_through_the_action_path_it_was_trained_on() -> None:
    """Action spec v3 and the per-step anneal came after the default was trained: it still runs on action spec
    v2 (x3 per decision within [1e-3, 1e3]) with its prior's 20-step warm-up and no anneal, so every base step's
    schedule factor is the warm-up's, with ``total_steps`` known or not."""
    default = chuck.load_policy("default")
    assert default.action_version == "2" and default.anneal is None and default.warmup == 20
    model = torch.nn.Linear(4, 2)
    for total in (None, 300):
        opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), default, total_steps=total, history=False)
        spec = opt.action_spec
        assert spec.version == "2" and spec.anneal_start is None
        assert float(spec.steps[0]) == math.log(3.0) and spec.lr_bounds == (1e-3, 1000.0)
        assert [spec.schedule_factor(k) for k in range(400)] == [spec.warmup_factor(k) for k in range(400)]
