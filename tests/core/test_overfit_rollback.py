"""The overfitting rollback: a validation loss well above its best puts the best weights back."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

import chuck
from chuck.core.guardrails import GuardrailConfig, Guardrails, ValidationVote
from tests.conftest import batch, make_net


def _step(model, opt, step: int) -> None:
    x, y = batch(step)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step(loss=loss)
    opt.zero_grad()


def _weights(model) -> dict[str, torch.Tensor]:
    return copy.deepcopy(model.state_dict())


def _same(model, weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


#: Validation losses of a run that improves steadily (little noise), the last one the best (1.0).
IMPROVING = (1.3, 1.2, 1.1, 1.05, 1.0)


def _known_noise(opt) -> None:
    """Four evaluations of a steadily improving run, so that the validation noise is known (small)."""
    for v in IMPROVING[:-1]:
        opt.observe(val_loss=v)


def _improve(model, opt) -> None:
    """20 steps with an evaluation every 4: validation losses ``IMPROVING``, the best (1.0) at step 20."""
    for s in range(20):
        if s and s % 4 == 0:
            opt.observe(val_loss=IMPROVING[s // 4 - 1])
        _step(model, opt, s)
    opt.observe(val_loss=IMPROVING[-1])


def _best_then_worse(model, opt, worse: float) -> None:
    """20 steps, a best validation loss of 1.0, 20 more steps, a reading of ``worse``, one step."""
    _improve(model, opt)
    for s in range(20, 40):
        _step(model, opt, s)
    opt.observe(val_loss=worse)
    _step(model, opt, 40)


def _opt(model, **config):
    # "constant" holds the lr, so every change of the multiplier below is the guardrail's
    return chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-2), "constant", model=model, guardrails=GuardrailConfig(**config)
    )


def test_overfitting_restores_the_best_weights_and_halves_the_lr() -> None:
    model = make_net()
    opt = _opt(model)
    _improve(model, opt)  # the best so far: its weights are kept at the next step
    best = _weights(model)
    for s in range(20, 40):
        _step(model, opt, s)
    opt.observe(val_loss=1.1)  # 10% above the best: noise, nothing happens
    _step(model, opt, 40)
    assert opt.guardrails.overfit_rollbacks == 0 and not _same(model, best)
    for s in range(41, 60):
        _step(model, opt, s)
    steps = opt.step_count
    opt.observe(val_loss=1.5)  # 50% above: overfitting
    _step(model, opt, 60)
    assert _same(model, best), "the best validation loss's weights were not restored"
    assert opt.step_count == steps, "the rollback step applied its (stale) gradients"
    assert opt.guardrails.overfit_rollbacks == 1
    assert opt.action_spec.lr_mult == pytest.approx(0.5)
    d = opt.decisions[-1]
    assert d.source == "guardrail" and "rollback_overfit" in d.reason and "step 20" in d.reason
    for s in range(61, 80):  # training goes on from the best weights
        _step(model, opt, s)
    assert not _same(model, best)


def test_training_loss_jump_after_a_rollback_is_no_spike() -> None:
    """Restored weights train at a higher loss than the overfitted ones; the spike guardrail must
    not roll that back to its own (overfitted) snapshot."""
    model = make_net()
    opt = _opt(model, snapshot_every=10)
    _improve(model, opt)
    _step(model, opt, 20)
    for s in range(21, 60):
        _step(model, opt, s)
    opt.observe(val_loss=2.0)
    _step(model, opt, 60)
    g = opt.guardrails
    assert g.overfit_rollbacks == 1 and g.snapshot_step == g.best.step == 20  # the spike snapshot is the restored state
    for s in range(61, 100):
        _step(model, opt, s)
    assert g.rollbacks == 0


def test_near_zero_validation_noise_is_no_overfitting() -> None:
    """A ratio of two near-zero losses is noise, and so is a rise by a few percent of the starting
    loss (``overfit_min_fraction``)."""
    model = make_net()
    opt = _opt(model)
    for s in range(20):
        if s in (5, 10, 15):
            opt.observe(val_loss={5: 2.0e-6, 10: 1.8e-6, 15: 1.7e-6}[s])
        _step(model, opt, s)
    opt.observe(val_loss=1.6e-6)
    _step(model, opt, 20)
    opt.observe(val_loss=5.8e-5)  # 35x the best, and far below a twentieth of the starting ~1.1
    _step(model, opt, 21)
    opt.observe(val_loss=0.04)  # 25000x the best, 3.6% of the starting loss
    _step(model, opt, 22)
    assert opt.guardrails.overfit_rollbacks == 0 and opt.step_count == 23
    opt.observe(val_loss=0.1)  # 9% of the starting loss: overfitting
    _step(model, opt, 23)
    assert opt.guardrails.overfit_rollbacks == 1


def test_a_lucky_best_does_not_pin_the_run() -> None:
    """After ``max_rollbacks_in_a_row`` rollbacks with no new best, the next overfitting reading
    becomes the reference instead of another rollback."""
    g = Guardrails(GuardrailConfig(max_rollbacks_in_a_row=2))
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = torch.optim.SGD(params, lr=0.1)
    for v in (1.4, 1.3, 1.2, 1.1):  # a few evaluations before the best: the noise is known
        g.judge_validation(v, initial_loss=2.0)
    assert g.judge_validation(1.0, initial_loss=2.0) is ValidationVote.SNAPSHOT
    g.take_best(0, params, opt, lr_mult=1.0)
    for _ in range(2):
        assert g.judge_validation(2.0, initial_loss=2.0) is ValidationVote.RESTORE
        response = g.respond_to_vote(ValidationVote.RESTORE, params, lr_mult=1.0)
        assert response is not None and response.restore == "best"
        g.restore("best", params, opt)
    assert g.judge_validation(2.0, initial_loss=2.0) is ValidationVote.SNAPSHOT
    assert g.best_val == 2.0
    assert g.judge_validation(2.1, initial_loss=2.0) is ValidationVote.NONE


def test_disabled_overfit_rollback_never_restores() -> None:
    model = make_net()
    opt = _opt(model, overfit_gl=None)
    _best_then_worse(model, opt, 5.0)
    assert opt.guardrails.overfit_rollbacks == 0 and opt.step_count == 41


@pytest.mark.parametrize("bad", [{"overfit_gl": 0.0}, {"overfit_gl": -1.0}, {"overfit_backoff": 0.0}, {"overfit_backoff": 2.0}])
def test_bad_overfit_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        GuardrailConfig(**bad)


def test_best_weights_survive_a_checkpoint() -> None:
    """A resumed run rolls back to the same weights as the run it resumes."""
    model = make_net()
    opt = _opt(model)
    for s in range(20):
        _step(model, opt, s)
    _known_noise(opt)
    opt.observe(val_loss=1.0)
    best = _weights(model)
    for s in range(20, 40):
        _step(model, opt, s)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    model2 = make_net()
    model2.load_state_dict(ck["model"])
    opt2 = _opt(model2)
    opt2.load_state_dict(ck["opt"])
    opt2.observe(val_loss=3.0)
    _step(model2, opt2, 40)
    assert _same(model2, best) and opt2.guardrails.overfit_rollbacks == 1


def test_closure_optimizer_rolls_back_too() -> None:
    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2), "constant", guardrails=True, model=model
    )

    def closure_at(s: int):
        def closure():
            opt.zero_grad()
            x, y = batch(s)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        return closure

    for s in range(5):
        opt.step(closure_at(s))
    _known_noise(opt)
    opt.observe(val_loss=1.0)
    best = _weights(model)
    for s in range(5, 10):
        opt.step(closure_at(s))
    steps = opt.step_count
    opt.observe(val_loss=2.0)
    assert opt.step(closure_at(10)) is None
    assert _same(model, best) and opt.step_count == steps
    assert opt.guardrails.overfit_rollbacks == 1


def test_the_run_record_counts_overfitting_rollbacks(tmp_path) -> None:
    from chuck.history import read_history

    model = make_net()
    opt = chuck.ChuckOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1e-2), "constant", guardrails=True, model=model, history=str(tmp_path)
    )
    _best_then_worse(model, opt, 2.0)
    opt.close()
    df = read_history(tmp_path)
    assert df["outcome_overfit_rollbacks"].to_list() == [1]


def test_batch_norm_statistics_go_back_with_the_weights() -> None:
    """Buffers are taken with the weights, at the next step: after that step's forward pass (one
    batch more in the running statistics than the evaluation saw), before its update."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = _opt(model)
    for s in range(20):
        _step(model, opt, s)
    _known_noise(opt)
    opt.observe(val_loss=1.0)
    x, y = batch(20)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    taken = model[1].running_mean.clone()
    opt.step(loss=loss)  # the snapshot is taken here
    opt.zero_grad()
    for s in range(21, 40):
        _step(model, opt, s)
    assert not torch.equal(model[1].running_mean, taken)
    opt.observe(val_loss=2.0)
    x, y = batch(40)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step(loss=loss)  # the rollback
    assert torch.equal(model[1].running_mean, taken)
    assert int(model[1].num_batches_tracked) == 21


@pytest.mark.parametrize("persistence", [0, 2])
def test_a_lasting_rise_within_the_noise_counts_only_when_asked(persistence: int) -> None:
    """A validation loss that stays 30% above its best for two evaluations, on a run whose evaluations are
    noisy enough that each rise alone is within the noise: a rollback only with ``overfit_persistence=2``."""
    g = Guardrails(GuardrailConfig(overfit_persistence=persistence))
    params = [torch.nn.Parameter(torch.ones(3))]
    for v in (1.6, 1.0, 1.7, 1.1, 1.5, 0.9):  # noisy evaluations; the best (0.9) comes last
        g.judge_validation(v, initial_loss=2.0)
    g.take_best(0, params, torch.optim.SGD(params, lr=0.1), lr_mult=1.0)
    assert g.val_noise() * g.config.overfit_noise > 0.3  # a 0.3 rise is within the noise
    assert g.judge_validation(1.2, initial_loss=2.0) is ValidationVote.NONE
    expected = ValidationVote.RESTORE if persistence == 2 else ValidationVote.NONE
    assert g.judge_validation(1.2, initial_loss=2.0) is expected
