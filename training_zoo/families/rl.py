"""Reinforcement-learning families: policy-gradient agents on Gymnasium's classic control.

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
"""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from chuck.zoo import models
from chuck.zoo.task import SearchSpace, Task, TaskConfig, TaskInstance, make_optimizer

_RL_SPACE = SearchSpace(
    widths=(32, 64, 128), depths=(1, 2), activations=("tanh", "relu"), norms=("none",),
    batch_sizes=(8,), dropouts=(0.0,), weight_decays=(0.0,),
)


class PolicyGradientInstance(TaskInstance):
    """REINFORCE (with a mean baseline) or A2C (n-step advantage, learned critic) on ``n_envs`` copies.

    One ``train_step`` = one rollout of ``horizon`` steps in each env + one gradient.
    """

    def __init__(self, env_id: str, algo: str, config: TaskConfig, ret_range: tuple[float, float],
                 n_envs: int = 8, horizon: int = 32, gamma: float = 0.99) -> None:
        self.config, self.algo, self.gamma, self.horizon = config, algo, gamma, horizon
        self.ret_min, self.ret_max = ret_range
        self.envs = [gym.make(env_id) for _ in range(n_envs)]
        self.obs = np.stack([e.reset(seed=config.seed + i)[0] for i, e in enumerate(self.envs)]).astype(np.float32)
        obs_dim, n_act = self.envs[0].observation_space.shape[0], self.envs[0].action_space.n
        torch.manual_seed(config.seed)
        self.model = models.mlp(obs_dim, n_act + (1 if algo == "a2c" else 0), config.width, config.depth, config.activation)
        self.n_act = n_act
        self.optimizer = make_optimizer(config.optimizer, self.model.parameters(), config.lr, config.weight_decay)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.ep_returns = [0.0] * n_envs
        self.finished: deque[float] = deque(maxlen=10)
        self.loss_reference = 1.0

    def _regret(self) -> float:
        if not self.finished:
            return 1.0  # no episode finished yet: nothing achieved
        running = float(np.mean(self.finished))
        return max(1e-3, (self.ret_max - running) / (self.ret_max - self.ret_min))

    def train_step(self) -> torch.Tensor:
        logps, values, rewards, dones, entropies = [], [], [], [], []
        for _ in range(self.horizon):
            out = self.model(torch.from_numpy(self.obs))
            logits = out[:, : self.n_act]
            dist = torch.distributions.Categorical(logits=logits)
            u = torch.rand(len(self.envs), generator=self.generator)
            probs = dist.probs.detach()
            action = torch.searchsorted(probs.cumsum(-1), u[:, None]).squeeze(-1).clamp_max(self.n_act - 1)
            logps.append(dist.log_prob(action))
            entropies.append(dist.entropy())
            if self.algo == "a2c":
                values.append(out[:, -1])
            step_r, step_d = np.zeros(len(self.envs), np.float32), np.zeros(len(self.envs), np.float32)
            for i, env in enumerate(self.envs):
                o, r, term, trunc, _ = env.step(int(action[i]))
                self.ep_returns[i] += r
                step_r[i], step_d[i] = r, float(term)
                if term or trunc:
                    self.finished.append(self.ep_returns[i])
                    self.ep_returns[i] = 0.0
                    o, _ = env.reset()
                    step_d[i] = 1.0
                self.obs[i] = o
            rewards.append(torch.from_numpy(step_r))
            dones.append(torch.from_numpy(step_d))
        logp, ent = torch.stack(logps), torch.stack(entropies)
        with torch.no_grad():
            boot = self.model(torch.from_numpy(self.obs))[:, -1] if self.algo == "a2c" else torch.zeros(len(self.envs))
            rets, g = [], boot
            for r, d in zip(reversed(rewards), reversed(dones)):
                g = r + self.gamma * g * (1.0 - d)
                rets.append(g)
            rets = torch.stack(rets[::-1])
        if self.algo == "a2c":
            v = torch.stack(values)
            adv = (rets - v).detach()
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            loss = -(logp * adv).mean() + 0.5 * (rets - v).pow(2).mean() / (rets.var() + 1.0) - 0.01 * ent.mean()
        else:
            adv = (rets - rets.mean()) / (rets.std() + 1e-8)
            loss = -(logp * adv).mean() - 0.01 * ent.mean()
        loss.backward()
        return torch.tensor(self._regret())

    def evaluate(self) -> float:
        return self._regret()

    def metrics(self) -> dict[str, float]:
        return {"mean_return": float(np.mean(self.finished)) if self.finished else float("nan")}


class CartPoleReinforce(Task):
    id, domain, budget = "rl.cartpole_reinforce", "rl", 120
    space = _RL_SPACE

    def build(self, config: TaskConfig) -> TaskInstance:
        return PolicyGradientInstance("CartPole-v1", "reinforce", config, (0.0, 500.0))


class CartPoleA2C(Task):
    id, domain, budget = "rl.cartpole_a2c", "rl", 120
    space = _RL_SPACE

    def build(self, config: TaskConfig) -> TaskInstance:
        return PolicyGradientInstance("CartPole-v1", "a2c", config, (0.0, 500.0))


FAMILIES = [CartPoleReinforce, CartPoleA2C]
