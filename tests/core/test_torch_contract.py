"""The torch.optim contract, modelled on torch's own optimizer hook tests (test/optim/test_optim.py):
step hooks per optimizer and global, state-dict hooks, handles; closure optimizers; sparse
gradients; nothing trainable; the decision log as a sequence."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import chuck
from tests.conftest import batch, make_net, run_steps


def _opt(model=None, policy="constant", **kw):
    model = model or make_net()
    return model, chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), policy, model=model, history=False, **kw)


def test_step_hooks_get_torchs_arguments_and_handles_remove_them() -> None:
    model, opt = _opt()
    calls: list[tuple] = []

    def pre(o, args, kwargs):
        calls.append(("pre", o, args, dict(kwargs)))

    def post(o, args, kwargs):
        calls.append(("post", o, args, dict(kwargs)))

    h1, h2 = opt.register_step_pre_hook(pre), opt.register_step_post_hook(post)
    run_steps(model, opt, 0, 2)
    assert [c[0] for c in calls] == ["pre", "post", "pre", "post"]
    assert all(c[1] is opt for c in calls)
    assert "loss" in calls[0][3], "hooks receive the keyword arguments step() was called with"
    h1.remove()
    h2.remove()
    run_steps(model, opt, 2, 4)
    assert len(calls) == 4


def test_pre_hook_return_value_replaces_the_arguments() -> None:
    model, opt = _opt()
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: (args, {"loss": kwargs["loss"] * 0 + 7.0}))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(float(kwargs["loss"].detach())))
    run_steps(model, opt, 0, 3)
    assert seen == [7.0, 7.0, 7.0]
    assert opt.loss_monitor.stats()["loss.log_ratio_initial"] == 0.0, "chuck saw the replaced (constant) loss"


def test_global_hooks_fire_for_the_wrapper() -> None:
    model, opt = _opt()
    owners: list[object] = []
    h1 = register_optimizer_step_pre_hook(lambda o, a, k: owners.append(("pre", o)))
    h2 = register_optimizer_step_post_hook(lambda o, a, k: owners.append(("post", o)))
    try:
        run_steps(model, opt, 0, 1)
    finally:
        h1.remove()
        h2.remove()
    assert ("pre", opt) in owners and ("post", opt) in owners
    run_steps(model, opt, 1, 2)
    assert len(owners) == 4  # removed: nothing more (2 for the wrapper, 2 for the base optimizer)


def test_post_hooks_fire_on_skipped_steps() -> None:
    model, opt = _opt(guardrails=True)
    fired = []
    opt.register_step_post_hook(lambda o, a, k: fired.append(o.step_count))
    x, y = batch(0)
    (F.cross_entropy(model(x), y) * float("nan")).backward()
    opt.step(loss=torch.tensor(float("nan")))
    assert fired == [0] and opt.guardrails.skips == 1


def test_state_dict_hooks_fire_and_can_rewrite() -> None:
    model, opt = _opt()
    run_steps(model, opt, 0, 3)
    events = []
    opt.register_state_dict_pre_hook(lambda o: events.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: events.append("load_pre"))
    handle = opt.register_load_state_dict_post_hook(lambda o: events.append("load_post"))
    sd = opt.state_dict()
    assert sd["extra"] == 1 and events == ["sd_pre"]
    sd.pop("extra")
    opt.load_state_dict(sd)
    assert events == ["sd_pre", "load_pre", "load_post"]
    handle.remove()
    opt.load_state_dict(sd)
    assert events[-1] == "load_pre"


def test_lbfgs_with_a_closure() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 1)
    x = torch.randn(64, 5)
    y = x @ torch.arange(1.0, 6.0).unsqueeze(1)
    opt = chuck.ChuckOptimizer(torch.optim.LBFGS(model.parameters(), lr=0.5), "heuristic", interval=2, history=False)

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    first = float(closure())
    for _ in range(10):
        loss = opt.step(closure)
    assert float(loss) < 0.01 * first
    assert opt.loss_monitor.history == 10 and len(opt.decisions) == 5
    with pytest.raises(TypeError, match="closure"):
        opt.step()


def test_lbfgs_nonfinite_first_evaluation_is_skipped() -> None:
    model = nn.Linear(3, 1)
    opt = chuck.ChuckOptimizer(torch.optim.LBFGS(model.parameters()), "constant", guardrails=True, history=False)
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        opt.zero_grad()
        loss = model(torch.ones(4, 3)).sum() * float("inf")
        loss.backward()
        return loss

    opt.step(closure)
    assert opt.guardrails.skips == 1 and opt.step_count == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_sparse_adam_on_a_sparse_embedding() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(100, 8, sparse=True)
    head = nn.Linear(8, 2)
    opt = chuck.ChuckOptimizer(
        torch.optim.SparseAdam(list(emb.parameters()), lr=1e-2),
        "heuristic",
        model=emb,
        interval=4,
        max_grad_norm=0.01,
        history=False,
    )
    dense = torch.optim.Adam(head.parameters(), lr=1e-2)
    before = emb.weight.detach().clone()
    for _s in range(12):
        idx = torch.randint(0, 100, (16,))
        loss = F.cross_entropy(head(emb(idx)), idx % 2)
        loss.backward()
        opt.step(loss=loss)
        dense.step()
        opt.zero_grad()
        dense.zero_grad()
    assert opt.step_count == 12 and len(opt.decisions) == 3
    assert not torch.equal(before, emb.weight) and torch.isfinite(emb.weight).all()
    assert opt.grad_monitor.stats()["grad.clip_fraction"] > 0


def test_a_model_with_nothing_trainable() -> None:
    model = make_net()
    model.requires_grad_(False)
    with pytest.warns(RuntimeWarning, match="watches nothing"):
        opt = chuck.ChuckOptimizer(
            torch.optim.AdamW(model.parameters(), lr=1e-3), "heuristic", model=model, interval=5, history=False
        )
    for s in range(12):
        x, _ = batch(s)
        opt.step(loss=model(x).sum())
        opt.zero_grad()
    assert opt.step_count == 12
    assert "chuck watches nothing" in str(opt.health())


def test_decisions_index_and_slice_like_a_list() -> None:
    model, opt = _opt(policy="heuristic", interval=5, max_decisions=3)
    run_steps(model, opt, 0, 40)
    assert len(opt.decisions) == 3, "bounded by max_decisions"
    assert [d.step for d in opt.decisions[:2]] == [30, 35]
    assert opt.decisions[-1].step == 40
    assert isinstance(opt.decisions[:2], list)
    assert "step 40" in str(opt.decisions[-1])


def test_checkpoint_round_trip_survives_weights_only() -> None:
    model, opt = _opt(policy="heuristic", interval=5)
    run_steps(model, opt, 0, 12)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.load_state_dict(state)


#: every optimizer torch ships that takes ``step()`` on dense gradients (LBFGS and SparseAdam: above)
DENSE_OPTIMIZERS = sorted(
    name
    for name, cls in vars(torch.optim).items()
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and name not in ("Optimizer", "LBFGS", "SparseAdam")
)


@pytest.mark.parametrize("name", DENSE_OPTIMIZERS)
def test_every_torch_optimizer_runs_under_chuck(name: str) -> None:
    """Each of torch's optimizers, under the default policy with everything watched: decisions are
    taken and the gradient statistics are read (Adafactor's eps is a pair, not a threshold on |g|:
    reading it as a number raised at the first decision)."""
    model = make_net()
    params = list(model.parameters())
    if name == "Muon":  # it orthogonalizes matrix updates only (its documented use): the vectors stay frozen
        for p in params:
            p.requires_grad_(p.dim() == 2)
        params = [p for p in params if p.dim() == 2]
    opt = chuck.ChuckOptimizer(getattr(torch.optim, name)(params, lr=1e-3), "default", model=model, history=False)
    run_steps(model, opt, 0, 45, observe_every=10)
    assert [d.source for d in opt.decisions].count("policy") >= 2
    stats = opt.stats()
    assert math.isfinite(stats["grad.log10_abs_median"]) and math.isfinite(stats["weights.update_ratio_log10"])
