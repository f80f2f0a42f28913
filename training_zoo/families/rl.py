"""Reinforcement-learning families: on-policy agents (REINFORCE, A2C, PPO) on Gymnasium's CartPole.

chuck controls the *agent's* optimizer. The progress signal is the episodic
return, turned into a positive loss-like number so that the same monitors,
observation and reward apply:

    regret = max(1e-3, (R_max - R) / (R_max - R_min))

where R is the mean return of the last 10 finished training episodes and
[R_min, R_max] the environment's return range (CartPole-v1: [0, 500]).
Acrobot-v1 was tried and dropped: within an affordable budget (40k env steps)
A2C never left -500, so the family gave no learning signal. ``train_step`` hands chuck this regret as the loss it
monitors (the policy-gradient surrogate, whose value says nothing about
progress, is only backpropagated); ``evaluate`` returns it too, so the
meta-environment's reward is log(regret_prev / regret_now).

Value-based agents (DQN, TD policy evaluation) are in :mod:`chuck.zoo.families.rl_value`.
"""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from chuck.zoo import models
from chuck.zoo.task import SearchSpace, Task, TaskConfig, TaskInstance, make_optimizer

RL_SPACE = SearchSpace(
    widths=(32, 64, 128),
    depths=(1, 2),
    activations=("tanh", "relu"),
    norms=("none",),
    batch_sizes=(8,),
    dropouts=(0.0,),
    weight_decays=(0.0,),
)
CARTPOLE_RETURNS = (0.0, 500.0)


class EnvBatch:
    """``n`` copies of a Gymnasium env stepped in lockstep, auto-reset, with the running-return regret."""

    def __init__(self, env_id: str, n: int, seed: int, ret_range: tuple[float, float]) -> None:
        self.envs = [gym.make(env_id) for _ in range(n)]
        self.obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(self.envs)]).astype(np.float32)
        obs_shape = self.envs[0].observation_space.shape
        assert obs_shape is not None
        self.obs_dim = obs_shape[0]
        self.n_act = int(self.envs[0].action_space.n)  # type: ignore[attr-defined]  # a Discrete space
        self.ret_min, self.ret_max = ret_range
        self.ep_returns = np.zeros(n)
        self.finished: deque[float] = deque(maxlen=10)

    def __len__(self) -> int:
        return len(self.envs)

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step every copy; returns (rewards, terminated, episode-ended). ``obs`` then holds the next
        observations (the reset ones where an episode ended)."""
        n = len(self.envs)
        rew, term, done = np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
        for i, env in enumerate(self.envs):
            o, r, te, tr, _ = env.step(int(actions[i]))
            self.ep_returns[i] += r
            rew[i], term[i] = r, float(te)
            if te or tr:
                self.finished.append(float(self.ep_returns[i]))
                self.ep_returns[i] = 0.0
                o, _ = env.reset()
                done[i] = 1.0
            self.obs[i] = o
        return rew, term, done

    def regret(self) -> float:
        if not self.finished:
            return 1.0  # no episode finished yet: nothing achieved
        running = float(np.mean(self.finished))
        return max(1e-3, (self.ret_max - running) / (self.ret_max - self.ret_min))

    def mean_return(self) -> float:
        return float(np.mean(self.finished)) if self.finished else float("nan")


def sample_actions(logits: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
    """Categorical samples by inverse CDF in numpy: far cheaper per step than torch.distributions."""
    p = torch.softmax(logits, -1).numpy().astype(np.float64)
    u = rng.random(len(p))[:, None]
    return np.minimum((p.cumsum(-1) < u).sum(-1), p.shape[1] - 1)


class _AgentInstance(TaskInstance):
    """Common set-up: the env batch, an MLP policy (plus a value output for actor-critics), the optimizer."""

    def __init__(self, env_id: str, config: TaskConfig, ret_range: tuple[float, float], n_envs: int, value_head: bool) -> None:
        self.config = config
        self.envs = EnvBatch(env_id, n_envs, config.seed, ret_range)
        self.n_act = self.envs.n_act
        torch.manual_seed(config.seed)
        self.model = models.mlp(self.envs.obs_dim, self.n_act + int(value_head), config.width, config.depth, config.activation)
        self.optimizer = make_optimizer(config.optimizer, self.model.parameters(), config.lr, config.weight_decay)
        self.rng = np.random.default_rng(config.seed)
        self.loss_reference = 1.0

    def evaluate(self) -> float:
        return self.envs.regret()

    def metrics(self) -> dict[str, float]:
        return {"mean_return": self.envs.mean_return()}


class PolicyGradientInstance(_AgentInstance):
    """REINFORCE (with a mean baseline) or A2C (n-step advantage, learned critic) on ``n_envs`` copies.

    One ``train_step`` = one rollout of ``horizon`` steps in each env + one gradient.
    """

    def __init__(
        self,
        env_id: str,
        algo: str,
        config: TaskConfig,
        ret_range: tuple[float, float],
        n_envs: int = 8,
        horizon: int = 32,
        gamma: float = 0.99,
    ) -> None:
        super().__init__(env_id, config, ret_range, n_envs, value_head=algo == "a2c")
        self.algo, self.gamma, self.horizon = algo, gamma, horizon

    def train_step(self) -> torch.Tensor:
        logps, values, rewards, dones, entropies = [], [], [], [], []
        for _ in range(self.horizon):
            out = self.model(torch.from_numpy(self.envs.obs))
            logits = F.log_softmax(out[:, : self.n_act], -1)
            action = torch.from_numpy(sample_actions(logits.detach(), self.rng))
            logps.append(logits.gather(1, action[:, None]).squeeze(1))
            entropies.append(-(logits.exp() * logits).sum(-1))
            if self.algo == "a2c":
                values.append(out[:, -1])
            r, _, d = self.envs.step(action.numpy())
            rewards.append(torch.from_numpy(r))
            dones.append(torch.from_numpy(d))
        logp, ent = torch.stack(logps), torch.stack(entropies)
        with torch.no_grad():
            n = len(self.envs)
            boot = self.model(torch.from_numpy(self.envs.obs))[:, -1] if self.algo == "a2c" else torch.zeros(n)
            steps: list[torch.Tensor] = []
            g = boot
            for rew, done in zip(reversed(rewards), reversed(dones)):
                g = rew + self.gamma * g * (1.0 - done)
                steps.append(g)
            rets = torch.stack(steps[::-1])
        if self.algo == "a2c":
            v = torch.stack(values)
            adv = (rets - v).detach()
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            loss = -(logp * adv).mean() + 0.5 * (rets - v).pow(2).mean() / (rets.var() + 1.0) - 0.01 * ent.mean()
        else:
            adv = (rets - rets.mean()) / (rets.std() + 1e-8)
            loss = -(logp * adv).mean() - 0.01 * ent.mean()
        loss.backward()
        return torch.tensor(self.envs.regret())


class PPOInstance(_AgentInstance):
    """PPO with the clipped surrogate and GAE (Schulman et al. 2017, arXiv:1707.06347).

    Unlike A2C, every rollout is reused for ``epochs`` passes of ``minibatches`` gradient
    steps each, so the optimizer sees several correlated steps on the same data and the
    clipping bounds how far the policy may move: a different lr trade-off from one-step
    actor-critics. One ``train_step`` = one minibatch gradient; a rollout of ``horizon``
    steps in each env is collected when the previous one is used up.
    """

    def __init__(
        self,
        env_id: str,
        config: TaskConfig,
        ret_range: tuple[float, float],
        n_envs: int = 8,
        horizon: int = 32,
        epochs: int = 4,
        minibatches: int = 2,
        gamma: float = 0.99,
        lam: float = 0.95,
        clip: float = 0.2,
    ) -> None:
        super().__init__(env_id, config, ret_range, n_envs, value_head=True)
        self.horizon, self.epochs, self.minibatches = horizon, epochs, minibatches
        self.gamma, self.lam, self.clip = gamma, lam, clip
        self.batches: list[np.ndarray] = []

    @torch.no_grad()
    def _collect(self) -> None:
        obs, acts, logps, vals, rews, terms, dones = [], [], [], [], [], [], []
        for _ in range(self.horizon):
            x = torch.from_numpy(self.envs.obs.copy())
            out = self.model(x)
            logits = F.log_softmax(out[:, : self.n_act], -1)
            a = sample_actions(logits, self.rng)
            obs.append(x)
            acts.append(torch.from_numpy(a))
            logps.append(logits.gather(1, torch.from_numpy(a)[:, None]).squeeze(1))
            vals.append(out[:, -1])
            r, te, d = self.envs.step(a)
            rews.append(r)
            terms.append(te)
            dones.append(d)
        next_v = self.model(torch.from_numpy(self.envs.obs))[:, -1].numpy()
        v = torch.stack(vals).numpy()
        adv = np.zeros_like(v)
        gae = np.zeros(v.shape[1], np.float32)
        for t in reversed(range(self.horizon)):
            nv = next_v if t == self.horizon - 1 else v[t + 1]
            # bootstrap through truncations (time limits), not through terminations
            delta = rews[t] + self.gamma * nv * (1.0 - terms[t]) - v[t]
            gae = delta + self.gamma * self.lam * (1.0 - dones[t]) * gae
            adv[t] = gae
        self.buf = {
            "obs": torch.cat(obs),
            "act": torch.cat(acts),
            "logp": torch.cat(logps),
            "adv": torch.from_numpy(adv.reshape(-1)),
            "ret": torch.from_numpy((adv + v).reshape(-1)),
        }
        n = len(self.buf["obs"])
        self.batches = [b for _ in range(self.epochs) for b in np.array_split(self.rng.permutation(n), self.minibatches)]

    def train_step(self) -> torch.Tensor:
        if not self.batches:
            self._collect()
        idx = torch.from_numpy(self.batches.pop(0))
        b = {k: v[idx] for k, v in self.buf.items()}
        out = self.model(b["obs"])
        logits = F.log_softmax(out[:, : self.n_act], -1)
        logp = logits.gather(1, b["act"][:, None]).squeeze(1)
        ratio = (logp - b["logp"]).exp()
        adv = (b["adv"] - b["adv"].mean()) / (b["adv"].std() + 1e-8)
        pg = -torch.min(ratio * adv, ratio.clamp(1 - self.clip, 1 + self.clip) * adv).mean()
        # value targets are returns in the tens to hundreds: scale the loss so the two heads stay balanced
        vf = (out[:, -1] - b["ret"]).pow(2).mean() / (b["ret"].var() + 1.0)
        ent = -(logits.exp() * logits).sum(-1).mean()
        (pg + 0.5 * vf - 0.01 * ent).backward()
        return torch.tensor(self.envs.regret())


class CartPoleReinforce(Task):
    """REINFORCE with a mean baseline on CartPole-v1. Axis: RL objective (high-variance Monte-Carlo gradient)."""

    id, domain, budget = "rl.cartpole_reinforce", "rl", 120
    space = RL_SPACE

    def build(self, config: TaskConfig) -> TaskInstance:
        return PolicyGradientInstance("CartPole-v1", "reinforce", config, CARTPOLE_RETURNS)


class CartPoleA2C(Task):
    """A2C (n-step advantage, shared actor-critic MLP) on CartPole-v1. Axis: RL objective (actor-critic)."""

    id, domain, budget = "rl.cartpole_a2c", "rl", 120
    space = RL_SPACE

    def build(self, config: TaskConfig) -> TaskInstance:
        return PolicyGradientInstance("CartPole-v1", "a2c", config, CARTPOLE_RETURNS)


class CartPolePPO(Task):
    """PPO (clipped surrogate, GAE, 4 epochs x 2 minibatches per rollout) on CartPole-v1.

    Axis: RL objective with data reuse and a trust region, many small steps per rollout.
    """

    id, domain, budget = "rl.cartpole_ppo", "rl", 600
    space = RL_SPACE

    def build(self, config: TaskConfig) -> TaskInstance:
        return PPOInstance("CartPole-v1", config, CARTPOLE_RETURNS)


FAMILIES = [CartPoleReinforce, CartPoleA2C, CartPolePPO]
