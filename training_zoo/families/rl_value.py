"""Value-based reinforcement-learning families: DQN control and TD(0) policy evaluation on CartPole.

Both learn from *bootstrapped* targets: the regression target moves with the
network (through a periodically copied target network), so a too-high lr does
not only overshoot, it feeds its own errors back into the targets. That is a
different failure mode from the policy-gradient families in
:mod:`chuck.zoo.families.rl`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chuck.zoo import models
from chuck.zoo.families.rl import CARTPOLE_RETURNS, RL_SPACE, EnvBatch
from chuck.zoo.task import SearchSpace, Task, TaskConfig, TaskInstance, make_optimizer


class DQNInstance(TaskInstance):
    """DQN (Mnih et al. 2015) with a replay buffer, a hard-copied target network, double-Q targets
    (van Hasselt et al. 2016) and a Huber TD loss; epsilon-greedy exploration decaying from 1 to 0.05
    over the first ``explore`` transitions.

    One ``train_step`` = one env step in each of ``n_envs`` copies + one minibatch TD update.
    The monitored loss and the validation loss are the return regret (see :mod:`chuck.zoo.families.rl`).
    """

    def __init__(
        self,
        env_id: str,
        config: TaskConfig,
        ret_range: tuple[float, float],
        n_envs: int = 4,
        batch: int = 64,
        capacity: int = 20_000,
        explore: int = 2_000,
        warmup: int = 256,
        target_every: int = 100,
        gamma: float = 0.99,
    ) -> None:
        self.config = config
        self.envs = EnvBatch(env_id, n_envs, config.seed, ret_range)
        torch.manual_seed(config.seed)
        self.model = models.mlp(self.envs.obs_dim, self.envs.n_act, config.width, config.depth, config.activation)
        # a zero head makes every Q equal, so the first greedy policy is a constant action (returns ~10):
        # a random head is, by chance, sometimes a good CartPole controller before any learning
        # (random linear policies often balance the pole), which hides what the lr does
        nn.init.zeros_(self.model[-1].weight)
        nn.init.zeros_(self.model[-1].bias)
        self.target = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = make_optimizer(config.optimizer, self.model.parameters(), config.lr, config.weight_decay)
        self.rng = np.random.default_rng(config.seed)
        d = self.envs.obs_dim
        self.buf_obs, self.buf_next = np.zeros((capacity, d), np.float32), np.zeros((capacity, d), np.float32)
        self.buf_act, self.buf_rew = np.zeros(capacity, np.int64), np.zeros(capacity, np.float32)
        self.buf_term = np.zeros(capacity, np.float32)
        self.size = self.pos = self.transitions = self.updates = 0
        self.capacity, self.batch, self.explore, self.warmup = capacity, batch, explore, warmup
        self.target_every, self.gamma = target_every, gamma
        self.loss_reference = 1.0

    def _act(self) -> None:
        obs = self.envs.obs.copy()
        eps = max(0.05, 1.0 - 0.95 * self.transitions / self.explore)
        with torch.no_grad():
            greedy = self.model(torch.from_numpy(obs)).argmax(-1).numpy()
        random = self.rng.integers(0, self.envs.n_act, len(obs))
        act = np.where(self.rng.random(len(obs)) < eps, random, greedy)
        # the env batch auto-resets: keep the true next observation of an ended episode out of
        # the replay only where it was a termination (then the target does not bootstrap anyway)
        rew, term, _ = self.envs.step(act)
        idx = (self.pos + np.arange(len(obs))) % self.capacity
        self.buf_obs[idx], self.buf_act[idx], self.buf_rew[idx] = obs, act, rew
        self.buf_next[idx], self.buf_term[idx] = self.envs.obs, term
        self.pos = int((self.pos + len(obs)) % self.capacity)
        self.size = min(self.capacity, self.size + len(obs))
        self.transitions += len(obs)

    def train_step(self) -> torch.Tensor:
        self._act()
        while self.size < self.warmup:  # fill the buffer with random play before the first update
            self._act()
        i = self.rng.integers(0, self.size, self.batch)
        obs, nxt = torch.from_numpy(self.buf_obs[i]), torch.from_numpy(self.buf_next[i])
        with torch.no_grad():
            a_next = self.model(nxt).argmax(-1, keepdim=True)
            q_next = self.target(nxt).gather(1, a_next).squeeze(1)
            y = torch.from_numpy(self.buf_rew[i]) + self.gamma * (1 - torch.from_numpy(self.buf_term[i])) * q_next
        q = self.model(obs).gather(1, torch.from_numpy(self.buf_act[i])[:, None]).squeeze(1)
        F.smooth_l1_loss(q, y).backward()
        self.updates += 1
        if self.updates % self.target_every == 0:
            self.target.load_state_dict(self.model.state_dict())
        return torch.tensor(self.envs.regret())

    def evaluate(self) -> float:
        return self.envs.regret()

    def metrics(self) -> dict[str, float]:
        return {"mean_return": self.envs.mean_return()}


@functools.cache
def cartpole_behaviour_data(n_episodes: int, gamma: float, seed: int) -> dict[str, np.ndarray]:
    """Transitions of a noisy hand-written CartPole controller, with their discounted Monte-Carlo returns.

    The controller pushes toward the pole's lean (angle + angular velocity) but acts at random
    half of the time, so episodes last from a few dozen to a few hundred steps and the values
    spread widely. Returns per transition: obs, next obs, reward, termination, MC return, episode id.
    """
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("obs", "next", "rew", "term", "ret", "episode")}
    for ep in range(n_episodes):
        o, _ = env.reset(seed=seed * 10_000 + ep)
        rews = []
        while True:
            a = int(o[2] + 0.5 * o[3] > 0) if rng.random() > 0.5 else int(rng.integers(2))
            o2, r, te, tr, _ = env.step(a)
            cols["obs"].append(o)
            cols["next"].append(o2)
            cols["term"].append(float(te))
            cols["episode"].append(ep)
            rews.append(r)
            o = o2
            if te or tr:
                break
        g, rets = 0.0, []
        for r in reversed(rews):  # truncated episodes (500 steps) slightly underestimate: rare here
            g = float(r) + gamma * g
            rets.append(g)
        cols["rew"] += rews
        cols["ret"] += rets[::-1]
    return {k: np.asarray(v, dtype=np.int64 if k == "episode" else np.float32) for k, v in cols.items()}


class TDValueInstance(TaskInstance):
    """Semi-gradient TD(0) policy evaluation (Sutton 1988) with a target network, on logged transitions.

    ``train_step`` regresses V(s) onto r + gamma V_target(s') for a minibatch of training
    transitions; ``evaluate`` is the squared error of V against the Monte-Carlo returns of
    held-out episodes, in the returns' own units (their variance is ~20, their mean square ~340).
    """

    def __init__(self, config: TaskConfig, gamma: float = 0.95, target_every: int = 10) -> None:
        self.config, self.gamma, self.target_every = config, gamma, target_every
        d = cartpole_behaviour_data(160, gamma, 0)
        val = d["episode"] % 4 == 0  # whole episodes held out, so no state leaks through its neighbours
        rng = np.random.default_rng(config.seed)
        tr_idx = np.flatnonzero(~val)
        tr_idx = rng.permutation(tr_idx)[: max(256, int(len(tr_idx) * config.data_fraction))]
        self.train = {k: torch.from_numpy(d[k][tr_idx]) for k in ("obs", "next", "rew", "term")}
        self.x_val, self.g_val = torch.from_numpy(d["obs"][val][:1024]), torch.from_numpy(d["ret"][val][:1024])
        torch.manual_seed(config.seed)
        self.model = models.mlp(4, 1, config.width, config.depth, config.activation, config.norm)
        self.target = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = make_optimizer(config.optimizer, self.model.parameters(), config.lr, config.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.steps = 0
        self.loss_reference = float(self.g_val.var())

    def train_step(self) -> torch.Tensor:
        i = torch.randint(len(self.train["obs"]), (self.config.batch_size,), generator=self.generator)
        with torch.no_grad():
            y = self.train["rew"][i] + self.gamma * (1 - self.train["term"][i]) * self.target(self.train["next"][i]).squeeze(1)
        loss = F.mse_loss(self.model(self.train["obs"][i]).squeeze(1), y)
        loss.backward()
        self.steps += 1
        if self.steps % self.target_every == 0:
            self.target.load_state_dict(self.model.state_dict())
        return loss.detach()

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        v = float(F.mse_loss(self.model(self.x_val).squeeze(1), self.g_val))
        self.model.train()
        return v


class CartPoleDQN(Task):
    """Double DQN on CartPole-v1 (replay, target network, Huber loss). Axis: RL objective, value-based
    off-policy control, a non-stationary regression target."""

    id, domain, budget = "rl.cartpole_dqn", "rl", 1500
    space = dataclasses.replace(RL_SPACE, widths=(64, 128))

    def build(self, config: TaskConfig) -> TaskInstance:
        return DQNInstance("CartPole-v1", config, CARTPOLE_RETURNS)


class CartPoleTDValue(Task):
    """TD(0) value prediction for a fixed noisy CartPole controller, evaluated against Monte-Carlo returns.

    Axis: RL objective (bootstrapped policy evaluation) and regression at a large target scale
    (discounted returns up to 20, a squared error of ~340 at the start).
    """

    id, domain, budget = "rl.cartpole_td_value", "rl", 800
    space = SearchSpace(
        widths=(32, 64, 128),
        depths=(1, 2, 3),
        activations=("tanh", "relu", "gelu"),
        norms=("none", "layer"),
        batch_sizes=(32, 64),
        data_fraction=(0.3, 1.0),
        dropouts=(0.0,),
        weight_decays=(0.0, 1e-4),
    )

    def build(self, config: TaskConfig) -> TaskInstance:
        return TDValueInstance(config)


FAMILIES = [CartPoleDQN, CartPoleTDValue]
