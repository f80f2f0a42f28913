"""One decision clock: the env and deployment decide at the same steps, see the same
observations and end with the same hyperparameters, faults included."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

import chuck
from chuck.core.actions import EFFECTIVE_LR_KEY
from chuck.envs import TrainingControlEnv
from chuck.policies.base import Policy
from chuck.zoo.loop import evaluate

TASK = "tabular.breast_cancer_mlp"
INTERVAL = 5


class ReplayPolicy(Policy):
    """Plays a fixed sequence of actions, one per decision."""

    name = "replay"

    def __init__(self, actions: list[np.ndarray]) -> None:
        self.actions = actions
        self.i = 0

    def act(self, observation: np.ndarray) -> np.ndarray:
        a = self.actions[min(self.i, len(self.actions) - 1)]
        self.i += 1
        return a


class FaultyInstance:
    """Wraps a task instance: at chosen calls the loss is NaN, inf, or a 50x spike, or a gradient is NaN."""

    def __init__(self, inner, faults: dict[int, str]) -> None:
        self.inner, self.faults, self.calls = inner, faults, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def train_step(self) -> torch.Tensor:
        self.calls += 1
        loss = self.inner.train_step()
        kind = self.faults.get(self.calls)
        if kind == "nan":
            return loss * math.nan
        if kind == "inf":
            return loss * math.inf
        if kind == "spike":
            return loss * 50.0
        if kind == "grad_nan":
            p = next(p for p in self.inner.model.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = math.nan
        return loss

    def evaluate(self) -> float:
        return self.inner.evaluate()


def _faults(seed: int, budget: int) -> dict[int, str]:
    rng = np.random.default_rng(seed)
    calls = rng.choice(np.arange(25, budget), size=6, replace=False)
    return {int(c): k for c, k in zip(calls, ("nan", "inf", "spike", "grad_nan", "nan", "spike"))}


def _env_run(seed: int, actions: list[np.ndarray], faults: dict[int, str], prior: str | None = None):
    env = TrainingControlEnv(
        tasks=TASK, interval=INTERVAL, budget_scale=0.5, p_no_total=0.0, p_no_model=0.0, p_no_val=0.0, prior=prior
    )
    task = env.tasks[0]
    build = task.build
    task.build = lambda cfg: FaultyInstance(build(cfg), faults)  # type: ignore[method-assign]
    try:
        obs, _ = env.reset(seed=seed)
        observations = [obs]
        for a in actions:
            obs, _, term, _, _ = env.step(a)
            observations.append(obs)
            if term:
                break
    finally:
        task.build = build  # type: ignore[method-assign]
    opt = env.opt
    assert opt is not None
    return env, opt, observations


def _deployment_run(env: TrainingControlEnv, actions: list[np.ndarray], faults: dict[int, str], policy: Any = None):
    """The same instance trained by a user's loop: step, and after a decision evaluate and observe."""
    torch.manual_seed(env.config.seed)
    inst = FaultyInstance(env.tasks[0].build(env.config), faults)
    opt = chuck.ChuckOptimizer(
        inst.optimizer,
        policy if policy is not None else ReplayPolicy(actions),
        model=inst.model,
        total_steps=env.budget,
        interval=INTERVAL,
        seed=env.config.seed,
        history=False,
    )
    observations = []
    evaluate(inst)  # the env evaluates once before training (the initial loss); evaluation is pure
    while opt.step_count < env.budget and opt.calls < 2 * env.budget:
        before = len([d for d in opt.decisions if d.source != "guardrail"])
        loss = inst.train_step()
        opt.step(loss=loss)
        opt.zero_grad()
        decided = [d for d in opt.decisions if d.source != "guardrail"]
        if len(decided) > before:
            observations.append(np.array(list(decided[-1].observation.values()), dtype=np.float32))
            v = evaluate(inst)
            if math.isfinite(v):
                opt.observe(val_loss=v)
    return opt, observations


def test_env_and_deployment_warm_up_alike() -> None:
    """A residual on prior@10 trains in the env with the prior's warm-up and deploys with it: with a
    zero residual, the env run and a user's loop under prior@10 take the same steps (faults included)."""
    probe = TrainingControlEnv(tasks=TASK, interval=INTERVAL, budget_scale=0.5)
    probe.reset(seed=0)
    faults = _faults(0, probe.budget)
    zeros = [np.zeros(4, dtype=np.float32)] * 200
    env, env_opt, _ = _env_run(0, zeros, faults, prior="prior@10")
    dep_opt, _ = _deployment_run(env, zeros, faults, policy="prior@10")
    assert env_opt.action_spec.warmup_steps == dep_opt.action_spec.warmup_steps == 20
    env_dec = [d for d in env_opt.decisions if d.source != "guardrail"]
    dep_dec = [d for d in dep_opt.decisions if d.source != "guardrail"]
    assert [d.hyperparameters for d in env_dec] == [d.hyperparameters for d in dep_dec[: len(env_dec)]]
    for p, q in zip(env.instance.model.parameters(), dep_opt.model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("seed", [0, 1])
def test_env_and_deployment_make_the_same_decisions(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    # half-range actions: a random walk of full-range ones can take the lr to divergence, where the
    # env ends its episode by design and the deployment run goes on; this test is about the clock
    actions = [rng.uniform(-0.5, 0.5, 4).astype(np.float32) for _ in range(200)]
    probe = TrainingControlEnv(tasks=TASK, interval=INTERVAL, budget_scale=0.5)
    probe.reset(seed=seed)
    faults = _faults(seed, probe.budget)

    env, env_opt, env_obs = _env_run(seed, actions, faults)
    dep_opt, dep_obs = _deployment_run(env, actions, faults)

    assert env_opt.step_count == env.budget, "the env episode must run to its budget for the comparison below"
    env_dec = [d for d in env_opt.decisions if d.source != "guardrail"]
    dep_dec = [d for d in dep_opt.decisions if d.source != "guardrail"]
    # the env's last observation is pending (the episode ended on it): deployment decided on it
    assert [d.step for d in env_dec] == [d.step for d in dep_dec][: len(env_dec)]
    assert len(dep_dec) == len(env_dec) + 1
    for a, b in zip(env_obs, dep_obs):
        np.testing.assert_array_equal(a, b)
    assert [d.hyperparameters for d in env_dec] == [d.hyperparameters for d in dep_dec[: len(env_dec)]]
    guard_env = [(d.step, d.reason.split(":")[0]) for d in env_opt.decisions if d.source == "guardrail"]
    guard_dep = [(d.step, d.reason.split(":")[0]) for d in dep_opt.decisions if d.source == "guardrail"]
    assert guard_env == guard_dep and len(guard_env) >= 4, "the injected faults must have been caught, alike"
    for p, q in zip(env.instance.model.parameters(), dep_opt.model.parameters()):
        assert torch.equal(p, q)


def test_policy_reset_is_called_when_a_run_starts() -> None:
    class Counting(ReplayPolicy):
        resets = 0

        def reset(self) -> None:
            type(self).resets += 1

    model = torch.nn.Linear(3, 1)
    chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Counting([np.zeros(4)]), history=False)
    assert Counting.resets == 1


def test_decision_hooks_return_handles() -> None:
    model = torch.nn.Linear(3, 1)
    opt = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "heuristic", interval=2, history=False)
    seen: list[int] = []
    handle = opt.register_decision_hook(lambda o, d: seen.append(d.step))
    for i in range(8):
        if i == 4:
            handle.remove()
        loss = model(torch.ones(2, 3)).pow(2).mean()
        loss.backward()
        opt.step(loss=loss)
        opt.zero_grad()
    assert seen == [2, 4]


def _side_by_side(policies: tuple[Any, Any], steps: int = 200) -> list[list[dict[str, float]]]:
    """Two models trained in one loop, each under its own ChuckOptimizer (a GAN's shape); every
    decision's hyperparameters per optimizer."""
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)) for _ in range(2)]
    opts = [
        chuck.ChuckOptimizer(torch.optim.Adam(m.parameters(), lr), p, model=m, history=False, total_steps=steps)
        for m, lr, p in zip(models, (1e-4, 1e-2), policies)
    ]
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for m, o in zip(models, opts):
            loss = m(torch.randn(16, 8, generator=gen)).pow(2).mean()
            loss.backward()
            o.step(loss=loss)
            o.zero_grad()
    return [[d.hyperparameters for d in o.decisions] for o in opts]


def test_one_policy_object_steering_two_optimizers_acts_as_two() -> None:
    """A policy keeps per-run state (the prior's cooldown and decision count): handed to two live
    optimizers, the second gets its own copy, and both decide as with separate instances."""
    shared = chuck.load_policy("default")
    together = _side_by_side((shared, shared))
    apart = _side_by_side((chuck.load_policy("default"), chuck.load_policy("default")))
    assert together == apart and len(together[1]) >= 5


def test_a_shared_policy_that_cannot_be_copied_is_refused_with_the_reason() -> None:
    import threading

    policy = ReplayPolicy([np.zeros(4)])
    policy.lock = threading.Lock()  # type: ignore[attr-defined]  # something deepcopy refuses
    model = torch.nn.Linear(3, 1)
    first = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), policy, history=False)
    with pytest.raises(ValueError, match="already steers another ChuckOptimizer"):
        chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), policy, history=False)
    del first  # that run is over: the object is free again
    import gc

    gc.collect()
    chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), policy, history=False)


def _blind_or_not(policy: str, give_loss: bool) -> tuple[torch.nn.Module, chuck.ChuckOptimizer]:
    import torch.nn.functional as F

    from tests.conftest import batch, make_net

    torch.manual_seed(0)
    net = make_net()
    opt = chuck.ChuckOptimizer(torch.optim.AdamW(net.parameters(), lr=1e-3), policy, model=net, history=False, total_steps=100)
    opt.advise = False
    for step in range(100):
        x, y = batch(step)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step(loss=loss) if give_loss else opt.step()
        opt.zero_grad()
    return net, opt


def test_a_learned_residual_stands_aside_in_a_run_that_reports_no_loss() -> None:
    """The default's residual never saw a run without training losses; in one (the loop calls step()) its
    prior decides alone: the run is the prior's, bit for bit, and each decision says why."""
    blind, opt = _blind_or_not("default", give_loss=False)
    prior, _ = _blind_or_not(opt.controller.policy.card["prior"], give_loss=False)
    assert all(torch.equal(a, b) for a, b in zip(blind.parameters(), prior.parameters()))
    assert len(opt.decisions) == 5 and {d.source for d in opt.decisions} == {"policy"}  # its own prior: still the policy
    assert all("the learned residual stands aside, its prior decided" in d.reason for d in opt.decisions)
    # with the loss the residual acts (the same run otherwise): other decisions, taken by the policy
    _, seeing = _blind_or_not("default", give_loss=True)
    assert {d.source for d in seeing.decisions} == {"policy"} and not any("stands aside" in d.reason for d in seeing.decisions)
    assert [d.hyperparameters for d in seeing.decisions] != [d.hyperparameters for d in opt.decisions]


def test_external_control_encodes_the_observation_version_it_is_given() -> None:
    """The meta-env's agent reads the spec it names; a policy reads its own and refuses another."""
    model = torch.nn.Linear(4, 1)
    external = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), policy=None, observation_version="2", history=False
    )
    assert external.controller.obs_spec.version == "2"
    assert external.observation().shape == (len(chuck.ObservationSpec("2").names),)
    newest = chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), policy=None, history=False)
    assert newest.controller.obs_spec.version == chuck.ObservationSpec().version
    env = TrainingControlEnv(tasks=TASK, interval=INTERVAL, budget_scale=0.05, observation_version="2")
    env.reset(seed=0)
    assert env.opt.controller.obs_spec.version == "2"
    policy = ReplayPolicy([np.zeros(4)])
    policy.observation_version = "2"
    agreeing = chuck.ChuckOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), policy=policy, observation_version=2, history=False
    )
    assert agreeing.controller.obs_spec.version == "2"  # an integer names the same spec
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="reads observation spec v2, not v3"):
        chuck.ChuckOptimizer(base, policy=policy, observation_version="3", history=False)
    assert all(EFFECTIVE_LR_KEY not in g for g in base.param_groups), "refused before anything was bound"
    with pytest.raises(ValueError, match="unknown"):
        chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), policy=None, observation_version="9", history=False)
    with pytest.raises(TypeError, match="observation_version"):
        chuck.ChuckOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), policy=None, observation_version=2.0, history=False)
