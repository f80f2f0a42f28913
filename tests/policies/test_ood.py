"""Out-of-distribution observations make ChuckOptimizer fall back and say why."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import chuck
from chuck.policies.artifact import save_artifact
from chuck.policies.learned import ActorNetwork
from tests.conftest import batch, make_net

#: The feature the tests put out of range: SGD at lr 3 moves the weights by far more than 1e-3 of their size.
FEATURE = "weights.update_ratio_log10"


def _artifact(tmp_path, low, high):
    torch.manual_seed(0)
    spec = chuck.ObservationSpec()
    actor = ActorNetwork(len(spec.names), 4, [8])
    return save_artifact(
        actor,
        tmp_path / "p",
        {
            "name": "tiny",
            "version": "1",
            "interval": 10,
            "architecture": {"hidden": [8], "activation": "tanh"},
            "observation_stats": {"low": list(map(float, low)), "high": list(map(float, high))},
        },
    )


def _run(opt, model, lr_scale: float = 1.0, steps: int = 40):
    for s in range(steps):
        x, y = batch(s)
        loss = F.cross_entropy(model(x), y) * lr_scale
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()


def test_in_range_observations_use_the_policy(tmp_path) -> None:
    spec = chuck.ObservationSpec()
    path = _artifact(tmp_path, spec.low, spec.high)  # trained on "everything": never OOD
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), str(path), model=model)
    _run(opt, model)
    assert opt.decisions and all(d.source == "policy" for d in opt.decisions)


def test_engineered_out_of_range_run_falls_back(tmp_path) -> None:
    spec = chuck.ObservationSpec()
    low, high = spec.low.copy(), spec.high.copy()
    i = spec.names.index(FEATURE)
    low[i], high[i] = -6.0, -3.0  # the policy only ever saw steps of at most 1e-3 of the weights
    path = _artifact(tmp_path, low, high)
    for mode, needle in (("heuristic", "heuristic"), ("hold", "hold")):
        model = make_net()
        opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=3.0), str(path), model=model, ood_fallback=mode)
        _run(opt, model)
        d = opt.decisions[-1]
        assert d.source == "fallback" and f"out of distribution ({FEATURE})" in d.reason and needle in d.reason
    policy = chuck.load_policy(str(path))
    obs = np.zeros(len(spec.names), dtype=np.float32)
    obs[i] = -4.0
    assert FEATURE not in policy.out_of_distribution(obs)


def test_a_run_whose_decisions_mostly_fall_back_is_told_once(tmp_path) -> None:
    """A policy that never saw this run's observations decides nothing in it: the heuristic does, at every
    decision. The loop is told once (a RuntimeWarning at its step line), and so are ``opt.health()``, the
    decision log (the decision at which more than half of those after the third fell back) and MLflow."""
    import warnings

    from mlflow import MlflowClient

    from chuck.core.controller import MOSTLY_OOD, OOD_JUDGED_AFTER, OOD_UNCOUNTED

    spec = chuck.ObservationSpec()
    low, high = spec.low.copy(), spec.high.copy()
    i = spec.names.index(FEATURE)
    low[i], high[i] = -6.0, -3.0
    path = _artifact(tmp_path, low, high)  # every decision of an lr-3 run is out of its range
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = chuck.MLflowDecisionLogger(experiment="chuck-ood", tracking_uri=uri, flush_every=0.2)
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=3.0), str(path), model=model, tracking=logger)
    steps = 10 * (OOD_UNCOUNTED + OOD_JUDGED_AFTER + 4)  # the card's interval is 10: four decisions past the verdict
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(opt, model, steps=steps)
    told = [w for w in caught if issubclass(w.category, RuntimeWarning) and "fell back to the heuristic" in str(w.message)]
    assert len(told) == 1, [str(w.message) for w in caught]
    assert told[0].filename == __file__, "the warning points at the loop's opt.step line"
    assert "retrain" in str(told[0].message).lower() and "docs/retraining.md" in str(told[0].message)
    assert len([d for d in opt.decisions if d.source == "fallback"]) == len(opt.decisions) >= OOD_UNCOUNTED + OOD_JUDGED_AFTER
    marked = [d for d in opt.decisions if MOSTLY_OOD in d.reason]
    assert len(marked) == 1 and marked[0] is opt.decisions[OOD_UNCOUNTED + OOD_JUDGED_AFTER - 1]
    assert any("fell back" in r for r in opt.health().recommendations)
    opt.close()
    tags = MlflowClient(tracking_uri=uri).get_run(logger.run_id).data.tags
    assert tags["chuck.mostly_out_of_distribution"] == str(marked[0].step)


def test_a_run_in_range_is_not_told_it_is_out_of_distribution(tmp_path) -> None:
    spec = chuck.ObservationSpec()
    path = _artifact(tmp_path, spec.low, spec.high)
    model = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), str(path), model=model)
    _run(opt, model, steps=100)
    assert not opt.controller.mostly_out_of_distribution and opt.controller.mostly_ood_at is None
    assert not any("fell back" in r for r in opt.health().recommendations)
