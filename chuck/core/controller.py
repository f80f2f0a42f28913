"""The Controller: the one decision clock, and everything about a decision.

Deployment (:class:`chuck.ChuckOptimizer` under a policy) and meta-training
(:class:`chuck.envs.TrainingControlEnv`, whose actions come from PPO) share it:

* **when**: a decision is due after every ``interval``-th *successful* base step
  (guardrail-skipped steps do not count); the two steps before it are sampled
  (update ratios) and the forward pass before it is armed (activations);
* **what is seen**: the monitor suite's costly hooks run, then
  :meth:`ObservationSpec.encode` of the merged statistics;
* **who acts**: the policy, checked (shape, finiteness, out-of-distribution
  fallback, any exception means hold) -- or, under external control, whoever
  calls :meth:`Controller.act_external` with the pending observation;
* **how it lands**: :meth:`ActionSpec.apply`, the decision record with a
  per-dimension explanation, and the decision hooks (MLflow logger, ...).

There is no second copy of any of this: the env cannot observe on another clock
or apply its action through another path than the one users run.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.hooks import RemovableHandle

from chuck.core.actions import ActionSpec
from chuck.core.explain import describe_feature, explain_action, training_ranges
from chuck.core.observation import ObservationSpec
from chuck.core.report import Decision, DecisionLog, changes
from chuck.monitors.control import ControlMonitor
from chuck.monitors.suite import MonitorSuite

if TYPE_CHECKING:
    from chuck.policies.base import Policy

DecisionHook = Callable[[Any, Decision], None]

#: Decisions after which a feature that has not changed at any of them counts as a constant of the run
#: (left out of a decision's words): one or two equal readings say nothing about whether it can move.
UNCHANGED_AFTER = 3

#: What to do when the observation leaves the range a learned policy was trained on.
OOD_FALLBACKS = ("heuristic", "hold", "off")

#: Decisions at the start of a run that are not counted when judging whether it is mostly out of
#: distribution (its statistics are still filling), and decisions counted after them before it is judged:
#: a run is *mostly out of distribution* once more than half of at least this many decisions after the
#: first ``OOD_UNCOUNTED`` fell back because the observation left the policy's training ranges.
OOD_UNCOUNTED = 3
OOD_JUDGED_AFTER = 3

#: The words that mark the decision at which a run became mostly out of distribution (its reason ends with
#: them and what they say): the MLflow logger tags the run when it sees them.
MOSTLY_OOD = "MOSTLY OUT OF DISTRIBUTION"


@dataclass
class PolicyAnswer:
    """The checked answer to "what now?": the action and where it came from."""

    action: np.ndarray
    source: str  # "policy" or "fallback"
    reason: str = ""
    attribution: dict[str, dict[str, float]] = field(default_factory=dict)
    failed: bool = False  # asking the policy failed (raised, wrong shape, non-finite): chuck held
    out_of_distribution: bool = False  # the observation left the policy's training ranges: the fallback decided


#: id(policy) -> the controller whose run it steers. A policy keeps per-run state (a prior's cooldown
#: and decision count, a learned policy's prior), so one object cannot steer two live runs.
_STEERING: dict[int, weakref.ref[Controller]] = {}


def _own(policy: Policy, controller: Controller) -> Policy:
    """``policy`` for ``controller``'s run: the object itself, or a copy when it already steers another
    live run (two optimizers sharing one policy object would each move the other's decision state)."""
    for key in [k for k, ref in _STEERING.items() if ref() is None]:
        del _STEERING[key]  # runs that ended
    other = _STEERING.get(id(policy))
    if other is not None and (run := other()) is not None and run.policy is policy:
        try:
            policy = copy.deepcopy(policy)
        except Exception as exc:  # noqa: BLE001 - a user's policy may hold what does not copy
            raise ValueError(
                f"policy {policy.id!r} already steers another ChuckOptimizer and cannot be copied "
                f"({type(exc).__name__}: {exc}); give each optimizer its own instance"
            ) from exc
    _STEERING[id(policy)] = weakref.ref(controller)
    return policy


def observation_version_for(policy: Policy | None, version: str | int | None) -> str | None:
    """The observation spec a controller encodes: a policy's own, else ``version`` (external control: the
    agent's), else ``None`` (the newest).

    Raises:
        TypeError: ``version`` is neither a string nor an integer.
        ValueError: ``version`` is not a spec this chuck knows, or names another spec than the policy reads.
    """
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, (str, int)):
            raise TypeError(f"observation_version must be a spec version such as '3', got {type(version).__name__}")
        version = str(version)
        ObservationSpec(version)  # an unknown version fails here, naming the known ones
    if policy is None:
        return version
    own = str(policy.observation_version)
    if version is not None and version != own:
        raise ValueError(
            f"policy {getattr(policy, 'id', policy)!r} reads observation spec v{own}, not v{version}: "
            "observation_version is the spec of a run under external control (policy=None); a built-in "
            "policy that takes one is constructed with it (e.g. HeuristicPolicy(observation_version=...))"
        )
    return own


class Controller:
    """Owns the decision clock, asks the policy, applies and records decisions.

    Args:
        policy: a :class:`chuck.policies.Policy`, or ``None`` for external control.
        action_spec: the bound action spec (the only writer of hyperparameters).
        suite: the run's monitors (the observation's source).
        control: the suite's :class:`ControlMonitor` (the ``ctrl.*`` features).
        interval: successful steps per decision (>= 2: updates are sampled on the two steps before one).
        owner: passed to decision hooks as their first argument (the optimizer).
        ood_fallback: ``"heuristic"``, ``"hold"`` or ``"off"``.
        ood_margin: tolerance beyond the trained range, as a fraction of that range.
        max_decisions: decisions kept in memory (``None``: all).
        observation_version: the observation spec encoded under external control (the agent's; default
            the newest). A policy reads its own, and naming another one for it is an error.
    """

    def __init__(
        self,
        policy: Policy | None,
        action_spec: ActionSpec,
        suite: MonitorSuite,
        control: ControlMonitor,
        *,
        interval: int,
        owner: Any = None,
        ood_fallback: str = "heuristic",
        ood_margin: float = 0.1,
        max_decisions: int | None = 50_000,
        observation_version: str | int | None = None,
    ) -> None:
        if interval < 2:
            raise ValueError(f"interval must be >= 2 (updates are sampled on the two steps before a decision), got {interval}")
        if ood_fallback not in OOD_FALLBACKS:
            raise ValueError(f"ood_fallback must be one of {OOD_FALLBACKS}, got {ood_fallback!r}")
        # the policy's own observation version (older artifacts keep loading); else the agent's, or the newest
        self.obs_spec = ObservationSpec(observation_version_for(policy, observation_version))
        if policy is not None:
            policy = _own(policy, self)
        self.policy = policy
        self.action_spec = action_spec
        self.suite = suite
        self.control = control
        self.interval = int(interval)
        self.owner = owner
        self.ood_fallback, self.ood_margin = ood_fallback, ood_margin
        self.decisions = DecisionLog(maxlen=max_decisions)
        self.pending: np.ndarray | None = None  # observation awaiting an external action
        self._hooks: OrderedDict[int, DecisionHook] = OrderedDict()
        self._fallback: Any = None
        self._first_obs: dict[str, float] | None = None  # the run's first observation, and what moved since
        self._varied: set[str] = set()
        self._observed = 0
        self._lr_moves_seen = action_spec.lr_moves  # the lr multiplier's moves already in a record
        self.asked = 0  # decisions the policy was asked for in this run
        self.ood_counted = [0, 0]  # after the first OOD_UNCOUNTED: [decisions, out-of-distribution fallbacks]
        self.mostly_ood_at: int | None = None  # the step at which the run became mostly out of distribution
        self.ranks: Any = None  # a chuck.core.distributed.RankSync under data parallelism: rank 0 decides for all
        if policy is not None:
            policy.reset()  # a new run starts

    @property
    def policy_id(self) -> str:
        return self.policy.id if self.policy is not None else "external"

    # -- the clock ----------------------------------------------------------
    def is_sampled(self, steps_taken: int) -> bool:
        """Whether the coming step (``steps_taken`` before it) is one of the two before a decision."""
        return steps_taken % self.interval >= self.interval - 2

    def arms_after(self, steps_taken: int) -> bool:
        """Whether the forward pass after ``steps_taken`` steps precedes a decision step."""
        return (steps_taken + 1) % self.interval == 0

    def is_due(self, steps_taken: int) -> bool:
        return steps_taken > 0 and steps_taken % self.interval == 0

    # -- deciding -------------------------------------------------------------
    def decide(self, step: int) -> Decision | None:
        """Run the monitors' decision work and decide (or, under external control, wait)."""
        self.suite.on_decision()
        obs = self.observation()
        if self.policy is None:
            self.pending = obs
            return None
        if self.ranks is None:
            answer = self.ask(obs)
        else:  # one rank asks, every rank applies its answer (and records its observation)
            answer, obs = self.ranks.agree(self.ask(obs) if self.ranks.is_leader else None, obs)
        reason = answer.reason + self._count_out_of_distribution(answer, step)
        return self.apply(
            answer.action, step=step, source=answer.source, reason=reason, observation=obs, attribution=answer.attribution
        )

    @property
    def mostly_out_of_distribution(self) -> bool:
        """Whether more than half of this run's decisions after its first ``OOD_UNCOUNTED`` (at least
        ``OOD_JUDGED_AFTER`` of them) fell back because the observation left the policy's training ranges:
        the learned policy is not what steers this run."""
        decisions, fallbacks = self.ood_counted
        return decisions >= OOD_JUDGED_AFTER and 2 * fallbacks > decisions

    def out_of_distribution_text(self) -> str:
        """What a mostly out-of-distribution run means and what to do, in words (advice, health, the decision log)."""
        decisions, fallbacks = self.ood_counted
        policy = self.policy_id
        return (
            f"{fallbacks} of the {decisions} decisions after the first {OOD_UNCOUNTED} fell back to the "
            f"{'heuristic' if self.ood_fallback == 'heuristic' else 'hold'}: this run's observations leave the ranges "
            f"policy {policy} was trained on, so it is not what steers the run. Retrain it with your task "
            "(chuck train-policy --tasks-module ... --init-policy ..., docs/retraining.md), or choose the heuristic "
            "yourself (policy='heuristic')"
        )

    def health_notes(self) -> list[str]:
        """The controller's recommendations for ``opt.health()``: a run that is mostly out of distribution."""
        return [self.out_of_distribution_text()] if self.mostly_out_of_distribution else []

    def _count_out_of_distribution(self, answer: PolicyAnswer, step: int) -> str:
        """Count one decision towards :attr:`mostly_out_of_distribution`; the note for its reason at the
        decision where the run becomes so (once a run), else ``""``."""
        self.asked += 1
        if self.asked <= OOD_UNCOUNTED:
            return ""
        self.ood_counted[0] += 1
        self.ood_counted[1] += int(answer.out_of_distribution)
        if self.mostly_ood_at is None and self.mostly_out_of_distribution:
            self.mostly_ood_at = step
            return f"; {MOSTLY_OOD}: {self.out_of_distribution_text()}"
        return ""

    def observation(self) -> np.ndarray:
        return self.obs_spec.encode(self.suite.stats())

    def act_external(self, action: Any, step: int) -> Decision:
        """Apply an action chosen outside (the meta-env's) to the pending observation."""
        if self.pending is None:
            raise RuntimeError("no decision is pending: train until the controller's next decision point first")
        obs, self.pending = self.pending, None
        return self.apply(action, step=step, source="external", observation=obs)

    def ask(self, obs: np.ndarray) -> PolicyAnswer:
        """The policy's checked action. Any failure in asking means hold: training never crashes because of chuck."""
        dims = len(self.action_spec.dims)
        policy = self.policy
        if policy is None:
            raise RuntimeError("no policy to ask: this controller is under external control (act_external)")
        try:
            if self._blind_residual():
                return self._prior_answer(obs)
            action = np.asarray(policy.act(obs.copy()), dtype=np.float64).reshape(-1)
            if action.shape != (dims,):
                return self._hold(f"policy returned shape {action.shape}, expected ({dims},)", failed=True)
            if not np.all(np.isfinite(action)):
                return self._hold("policy returned non-finite values", failed=True)
            outside = self._out_of_distribution(obs)
            if outside:
                return self._fallback_answer(obs, outside)
            return PolicyAnswer(action, "policy", attribution=_per_dimension(policy.explain(obs), action, self.action_spec.dims))
        except Exception as exc:  # noqa: BLE001 - any failure in asking (act, OOD check, explain) means hold
            return self._hold(f"asking the policy raised {type(exc).__name__}: {exc}", failed=True)

    @property
    def loss_blind(self) -> bool:
        """No training loss reported in this run so far (its loop calls ``step()`` without one)."""
        loss = self.suite.get("loss")
        return loss is not None and getattr(loss, "losses_seen", 1) == 0

    def _blind_residual(self) -> bool:
        """A learned residual in a run that has reported no training loss (its loop calls ``step()``).

        Every meta-training episode reported its losses, so the residual's loss inputs were never at
        their "missing" values; in a run without losses they read as a run that makes no progress at
        all, and the learned corrections to that state misfire (``experiments/loss_blind.py``: the
        default ended 1.44x worse in geo-mean on the validation families). Its prior reads no training
        loss (the hypergradient, the budget, validation losses), so the prior decides alone.
        """
        return self.policy is not None and self.policy.prior is not None and self.loss_blind

    def _prior_answer(self, obs: np.ndarray) -> PolicyAnswer:
        """The policy's own prior decides: still the policy (its built-in part), not a fallback to another rule."""
        assert self.policy is not None and self.policy.prior is not None
        prior = self.policy.prior
        self.policy.check_observation(obs)  # the policy's size check, as its act() would make it
        action = np.asarray(prior.act(obs.copy()), dtype=np.float64).reshape(-1)
        if action.shape != (len(self.action_spec.dims),) or not np.all(np.isfinite(action)):
            return self._hold(f"the prior returned {action!r}", failed=True)
        why = "no training loss reported (step() without loss=): the learned residual stands aside, its prior decided"
        return PolicyAnswer(action, "policy", why, _per_dimension(prior.explain(obs), action, self.action_spec.dims))

    def _out_of_distribution(self, obs: np.ndarray) -> list[str]:
        if self.policy is None or self.ood_fallback == "off":
            return []
        return list(self.policy.out_of_distribution(obs, margin=self.ood_margin))

    def _fallback_answer(self, obs: np.ndarray, outside: list[str]) -> PolicyAnswer:
        why = f"out of distribution ({', '.join(outside[:4])}{'...' if len(outside) > 4 else ''})"
        named = self.obs_spec.as_dict(obs)
        first = outside[0]
        if first in named:
            lo, hi = (self.policy.obs_low, self.policy.obs_high) if self.policy is not None else (None, None)
            seen = ""
            if lo is not None and hi is not None and first in self.obs_spec.names:
                i = self.obs_spec.names.index(first)
                a, b = float(lo[i]), float(hi[i])
                seen = (
                    f"; the policy only saw {a:.3g} in training" if a == b else f"; the policy saw {a:.3g}..{b:.3g} in training"
                )
            why += f": {describe_feature(first, named[first])} ({first} = {named[first]:.3g}{seen})"
        if self.ood_fallback == "hold":
            return PolicyAnswer(np.zeros(len(self.action_spec.dims)), "fallback", f"hold: {why}", out_of_distribution=True)
        if self._fallback is None:
            from chuck.policies.heuristic import HeuristicPolicy

            self._fallback = HeuristicPolicy(observation_version=self.obs_spec.version)
        action = np.asarray(self._fallback.act(obs), dtype=np.float64)
        attribution = _per_dimension(self._fallback.explain(obs), action, self.action_spec.dims)
        return PolicyAnswer(action, "fallback", f"{why}; the heuristic decided", attribution, out_of_distribution=True)

    def _hold(self, reason: str, failed: bool = False) -> PolicyAnswer:
        return PolicyAnswer(np.zeros(len(self.action_spec.dims)), "fallback", f"hold: {reason}", failed=failed)

    def apply(
        self,
        action: Any,
        *,
        step: int,
        source: str,
        reason: str = "",
        observation: np.ndarray | None = None,
        attribution: dict[str, dict[str, float]] | None = None,
    ) -> Decision:
        """Apply one action through :class:`ActionSpec` and record the decision."""
        obs = self.observation() if observation is None else observation
        before = self.action_spec.hyperparameters()
        result = self.action_spec.apply(action, self.control.median_grad_norm())
        attribution = attribution or {}
        named = self.obs_spec.as_dict(obs)
        loss = self.suite.get("loss")
        words = explain_action(
            self.action_spec.dims,
            before,
            result.hyperparameters,
            attribution,
            named,
            training_ranges=self._training_ranges(),
            constant=self._unchanged(named),
            steps_per_window=getattr(loss, "window", None),
        )
        if not (words or reason) and source != "external":
            words = "hold"
        reason = ": ".join(r for r in (reason, words) if r)
        if result.limited:
            reason = (reason + "; " if reason else "") + "at bound: " + ", ".join(result.limited)
        self.control.decision_made()
        return self.record(source, result.action, reason, step, obs, attribution, result.hyperparameters, before=before)

    def _unchanged(self, named: dict[str, float]) -> set[str]:
        """The features that have held one value at every decision of the run so far, this one included,
        once there are ``UNCHANGED_AFTER`` of them: constants of the run, never the reason for a decision."""
        if self._first_obs is None:
            self._first_obs = dict(named)
        else:
            self._varied.update(k for k, v in named.items() if k not in self._first_obs or v != self._first_obs[k])
        self._observed += 1
        if self._observed < UNCHANGED_AFTER:
            return set()
        return {k for k in named if k not in self._varied}

    def _training_ranges(self) -> dict[str, tuple[float, float]]:
        """The feature ranges a learned policy saw in training (the words' "usual" where no monitor sets one)."""
        if not hasattr(self, "_ranges"):
            self._ranges = training_ranges(self.policy) if self.policy is not None else {}
        return self._ranges

    def record(
        self,
        source: str,
        action: list[float],
        reason: str,
        step: int,
        obs: np.ndarray | None = None,
        attribution: dict[str, dict[str, float]] | None = None,
        hyperparameters: dict[str, float] | None = None,
        before: dict[str, float] | None = None,
    ) -> Decision:
        """Record one decision (and call the decision hooks).

        ``hyperparameters``: the values after it (default: now); ``before``: the values before it. Without
        ``before`` (a guardrail's intervention) the lr before is read off the lr multiplier's last move,
        when that move is a cut made since the previous record: a guardrail records every cut it makes
        at once, while the recoveries between interventions only ever raise the multiplier.
        """
        after = hyperparameters if hyperparameters is not None else self.action_spec.hyperparameters()
        if before is None:
            before = self._before_guardrail(after)
        self._lr_moves_seen = self.action_spec.lr_moves
        d = Decision(
            step=step,
            source=source,
            action=[float(a) for a in action],
            observation=self.obs_spec.as_dict(obs) if obs is not None else {},
            hyperparameters=after,
            reason=reason,
            attribution=attribution or {},
            policy_id=self.policy_id,
            changed=changes(before, after),
        )
        self.decisions.append(d)
        for hook in list(self._hooks.values()):
            try:
                hook(self.owner, d)
            except Exception as exc:  # noqa: BLE001 - a decision hook must never break training
                warnings.warn(f"chuck decision hook {hook!r} failed: {exc}", RuntimeWarning, stacklevel=3)
        return d

    def _before_guardrail(self, after: dict[str, float]) -> dict[str, float]:
        """The hyperparameters before an intervention recorded without them: ``after`` with the lr the
        multiplier's last cut started from, if that cut came after the previous record."""
        before = dict(after)
        spec = self.action_spec
        if spec.lr_moves != self._lr_moves_seen:
            was, now = spec.last_lr_move
            if 0 < now < was and "lr" in after:
                before["lr"] = after["lr"] * (was / now)
        return before

    def register_decision_hook(self, hook: DecisionHook) -> RemovableHandle:
        """Call ``hook(optimizer, decision)`` after every decision; ``handle.remove()`` stops it."""
        handle = RemovableHandle(self._hooks)
        self._hooks[handle.id] = hook
        return handle


def _per_dimension(raw: Any, action: np.ndarray, dims: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Normalize a policy's ``explain`` to ``{dimension: {feature: signed weight}}``.

    Policies that return one flat ``{feature: weight}`` mapping (the pre-redesign contract,
    or a user's policy) have it attributed to every dimension their action moved.
    """
    if not raw:
        return {}
    if all(isinstance(v, dict) for v in raw.values()):
        return {str(d): {str(k): float(w) for k, w in fw.items()} for d, fw in raw.items() if d in dims}
    flat = {str(k): float(w) for k, w in raw.items()}
    return {d: dict(flat) for d, a in zip(dims, action) if abs(float(a)) > 1e-6}


def explain_in_words(action: list[float], attribution: dict[str, dict[str, float]], dims: tuple[str, ...], k: int = 2) -> str:
    """ "lr up (loss.log_slope +0.41, weights.update_ratio_log10 +0.22)" for each dimension that moved.

    Terse, without values; decisions carry the full wording of :func:`chuck.core.explain.explain_action`."""
    parts = []
    for d, a in zip(dims, action):
        if abs(a) <= 1e-6:
            continue
        top = sorted(attribution.get(d, {}).items(), key=lambda kv: -abs(kv[1]))[:k]
        because = f" ({', '.join(f'{n} {w:+.2f}' for n, w in top)})" if top else ""
        parts.append(f"{d} {'up' if a > 0 else 'down'}{because}")
    return "; ".join(parts)
