"""The meta-environment: checkers with zero warnings, determinism, reward sign, info, user tasks."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import chuck.envs
from chuck import zoo
from chuck.core.observation import ObservationSpec
from chuck.envs import ENV_ID, TrainingControlEnv

SMALL = dict(interval=4, budget_scale=0.05)  # 8-step episodes: the checkers only need the plumbing


@pytest.mark.parametrize("task_id", zoo.list_tasks())
def test_checkers_pass_with_zero_warnings(task_id: str) -> None:
    env = TrainingControlEnv(tasks=task_id, **SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)
    assert [str(w.message) for w in caught] == []


def test_registered_id_makes_the_env() -> None:
    env = gym.make(ENV_ID, tasks="tabular.wine_mlp", **SMALL)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["task_id"] == "tabular.wine_mlp"


def _rollout(env: TrainingControlEnv, seed: int, actions: list[np.ndarray]):
    obs, _ = env.reset(seed=seed)
    out = [obs]
    rewards = []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append(obs)
        rewards.append(r)
        if term or trunc:
            break
    return out, rewards


@pytest.mark.parametrize("task_id", ["cv.digits_mlp", "nlp.parity_gru", "rl.cartpole_reinforce"])
def test_seeded_resets_are_deterministic(task_id: str) -> None:
    env = TrainingControlEnv(tasks=task_id, interval=5, budget_scale=0.15)
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, 4).astype(np.float32) for _ in range(4)]
    o1, r1 = _rollout(env, 42, actions)
    o2, r2 = _rollout(env, 42, actions)
    assert all(np.array_equal(a, b) for a, b in zip(o1, o2))
    assert r1 == r2
    o3, _ = _rollout(env, 43, actions)
    assert not np.array_equal(o1[0], o3[0])


def test_reward_sign_and_telescoping() -> None:
    """Progress gives positive reward; the return telescopes to log(L_start / L_end)."""
    env = TrainingControlEnv(tasks="tabular.breast_cancer_mlp", interval=10)
    env.reset(seed=0, options={"lr": 1e-3, "optimizer": "AdamW", "label_noise": 0.0, "depth": 1})
    total, done, info = 0.0, False, {}
    rewards = []
    while not done:
        _, r, done, _, info = env.step(np.zeros(4, dtype=np.float32))
        rewards.append(r)
        total += r
    assert not info["diverged"]
    assert total == pytest.approx(info["episode_log_ratio"], abs=1e-9)
    assert total > 0.3, "a good lr on breast cancer should cut the loss by far more than 25%"
    assert sum(r > 0 for r in rewards) > len(rewards) / 2


def test_divergence_ends_the_episode_with_the_penalty() -> None:
    env = TrainingControlEnv(tasks="tabular.friedman_regression", interval=10, divergence_penalty=1.0)
    env.reset(seed=0, options={"lr": 5.0, "optimizer": "SGD"})
    total, done, info = 0.0, False, {}
    while not done:
        _, r, done, _, info = env.step(np.ones(4, dtype=np.float32))  # and push the lr up
        total += r
    assert info["diverged"]
    assert total == pytest.approx(-1.0)
    for key in ("task_id", "family", "domain", "hyperparameters", "final", "diverged"):
        assert key in info
    assert info["hyperparameters"]["lr"] == 5.0 and info["domain"] == "tabular"


def test_the_env_uses_the_deployment_path() -> None:
    """The env's optimizer is a ChuckOptimizer and its actions are recorded as decisions."""
    env = TrainingControlEnv(tasks="cv.digits_mlp", interval=5, budget_scale=0.2, p_no_model=0.0)
    env.reset(seed=1)
    assert env.opt.model is env.instance.model
    env.step(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32))
    assert isinstance(env.opt, chuck.ChuckOptimizer)
    d = env.opt.decisions[-1]
    full_step = float(np.exp(env.opt.action_spec.steps[0]))  # one full lr step of the action spec in use
    assert d.source == "external" and d.action[0] == 1.0 and d.hyperparameters["lr_mult"] == pytest.approx(full_step)
    assert set(d.observation) == set(chuck.ObservationSpec().names)


def test_user_registered_task_runs_end_to_end() -> None:
    import torch
    from torch import nn

    class Sine(zoo.Task):
        id, domain, budget = "inhouse.sine", "inhouse", 40
        space = zoo.SearchSpace(optimizers=("Adam",), norms=("none",))

        def build(self, config: zoo.TaskConfig) -> zoo.TaskInstance:
            x = torch.linspace(-3, 3, 256).unsqueeze(1)
            y = torch.sin(x).squeeze(1)
            model = nn.Sequential(nn.Linear(1, config.width), nn.Tanh(), nn.Linear(config.width, 1))
            opt = zoo.make_optimizer(config.optimizer, model.parameters(), config.lr, 0.0)
            return zoo.SupervisedInstance(
                model, opt, config, (x, y), (x, y), lambda o, t: ((o.squeeze(1) - t) ** 2).mean(), 1.0, accuracy=False
            )

    zoo.register_task(Sine, replace=True)
    try:
        _run_user_task()
    finally:
        zoo.unregister_task("inhouse.sine")


def _run_user_task() -> None:
    assert "inhouse.sine" in zoo.list_tasks("custom")
    env = TrainingControlEnv(tasks="custom", interval=5)
    obs, info = env.reset(seed=0)
    assert info["task_id"] == "inhouse.sine"
    done, steps = False, 0
    while not done:
        obs, r, done, _, info = env.step(env.action_space.sample())
        assert math.isfinite(r)
        steps += 1
    assert steps == 40 // 5 - 1 and info["family"] == "inhouse.sine"


@pytest.mark.parametrize("lr,optimizer", [(1.0, "SGD"), (0.1, "Adam"), (1e-5, "RMSprop")])
def test_rewards_are_finite_even_when_warmup_diverges(lr: float, optimizer: str) -> None:
    """A run that diverges inside the warm-up interval must not produce inf/nan rewards (PPO would die)."""
    env = TrainingControlEnv(tasks="tabular.friedman_regression,cv.digits_mlp", interval=10, budget_scale=0.5)
    for seed in range(2):
        obs, _ = env.reset(seed=seed, options={"lr": lr, "optimizer": optimizer})
        done, total, info = False, 0.0, {}
        while not done:
            obs, r, done, _, info = env.step(np.ones(4, dtype=np.float32))
            assert math.isfinite(r) and np.isfinite(obs).all()
            total += r
        if info["diverged"]:
            assert total == pytest.approx(-env.divergence_penalty)


def test_task_weights_sample_a_task_more_often_and_are_checked() -> None:
    """``task_weights``: an in-house task among many zoo tasks can come up more often than 1 episode in N."""
    tasks = "tabular.friedman_regression,tabular.diabetes_regression"
    plain = TrainingControlEnv(tasks=tasks, **SMALL)
    weighted = TrainingControlEnv(tasks=tasks, task_weights={"tabular.diabetes_regression": 1e6}, **SMALL)
    np.testing.assert_allclose(weighted.task_probs, [1 / (1 + 1e6), 1e6 / (1 + 1e6)])
    seeds = range(10)
    assert [weighted.reset(seed=s)[1]["task_id"] for s in seeds] == ["tabular.diabetes_regression"] * 10
    # without weights the draw is the one it always was: the same seeds give the same tasks as before
    ids = [t.id for t in plain.tasks]
    expected = [ids[int(gym.utils.seeding.np_random(s)[0].integers(len(ids)))] for s in seeds]
    assert [plain.reset(seed=s)[1]["task_id"] for s in seeds] == expected
    assert plain.task_probs is None and "tabular.friedman_regression" in expected

    with pytest.raises(ValueError, match=r"not being trained on: \['cv.digits_mlp'\]"):
        TrainingControlEnv(tasks=tasks, task_weights={"cv.digits_mlp": 2.0}, **SMALL)
    for bad in (0.0, -1.0, math.inf, math.nan, True, "2"):
        with pytest.raises(ValueError, match="positive finite number"):
            TrainingControlEnv(tasks=tasks, task_weights={"tabular.friedman_regression": bad}, **SMALL)  # type: ignore[dict-item]


@pytest.mark.parametrize("task_id", [t for t in zoo.list_tasks("all") if zoo.get_task(t).domain == "rl"])
def test_close_releases_an_rl_instance(task_id: str) -> None:
    """Regression: an RL instance holds its simulators in a batch object, and close() iterated it."""
    env = TrainingControlEnv(tasks=task_id, budget_scale=0.05)
    env.reset(seed=0)
    env.close()
    assert env.instance is None and env.opt is None


def test_the_warmup_is_the_priors_unless_given() -> None:
    """The env's optimizer warms the lr up as deployment would: the prior's warm-up by default, or
    the one given (meta-training's held-out evaluation passes a whole policy's)."""
    from chuck.policies.prior import WARMUP

    cases = [({}, 0), ({"prior": "prior@10"}, WARMUP), ({"warmup": 7}, 7), ({"prior": "prior@10", "warmup": 0}, 0)]
    for kwargs, steps in cases:
        env = TrainingControlEnv(tasks="tabular.wine_mlp", interval=5, budget_scale=0.1, **kwargs)
        env.reset(seed=0)
        assert env.opt.action_spec.warmup_steps == steps, kwargs
        env.close()


class _AnnealingPrior(chuck.Policy):
    """A prior that holds and anneals per step over the last 30% of a known budget (``Policy.anneal``)."""

    name, version, anneal = "annealing", "1", 0.3

    def act(self, observation):
        return np.zeros(4, dtype=np.float32)


def test_the_anneal_is_the_priors_and_needs_the_budget() -> None:
    """A prior that anneals per step (a registered one here) anneals in the env's episodes that give
    total_steps, as in deployment."""
    from chuck.policies import register_policy, unregister_policy

    register_policy("test.annealing", _AnnealingPrior)
    try:
        env = TrainingControlEnv(tasks="tabular.wine_mlp", interval=5, budget_scale=0.1, prior="test.annealing", p_no_total=0.0)
        env.reset(seed=0)
        assert env.anneal == _AnnealingPrior.anneal
        assert env.opt.action_spec.anneal_end == env.budget and env.opt.action_spec.anneal_start is not None
        env.close()
        env = TrainingControlEnv(tasks="tabular.wine_mlp", interval=5, budget_scale=0.1, prior="test.annealing", p_no_total=1.0)
        env.reset(seed=0)
        assert env.opt.action_spec.anneal_start is None
        env.close()
    finally:
        unregister_policy("test.annealing")


@pytest.mark.parametrize("version", ["2", "3"])
def test_the_agent_reads_the_observation_spec_it_was_given(version: str) -> None:
    spec = ObservationSpec(version)
    env = TrainingControlEnv(
        tasks="tabular.wine_mlp", interval=5, budget_scale=0.1, prior="prior@10", observation_version=version
    )
    try:
        obs, _ = env.reset(seed=0)
        assert env.observation_space.shape == obs.shape == (len(spec.names),) and env.observation_space.contains(obs)
        assert env.prior is not None and env.prior.observation_version == version
        obs, *_ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        assert obs.shape == (len(spec.names),)
    finally:
        env.close()
