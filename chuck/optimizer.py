"""ChuckOptimizer: the wrapper that monitors a run and lets a policy steer it.

One code path serves deployment and meta-training::

    loss.backward() -> opt.step(loss=loss)
      -> guardrails (non-finite? skip. spike? roll back)          chuck.guardrails
      -> clip (if on) -> base step with lr = theirs x multiplier   chuck.actions.ActionSpec.effective
      -> monitors (cheap every step; costly every `interval`)      chuck.monitors
      -> every `interval` steps: ObservationSpec.encode -> policy -> ActionSpec.apply

``chuck.envs`` drives the very same object with ``policy=None`` and calls
:meth:`ChuckOptimizer.observation` / :meth:`ChuckOptimizer.apply_action` itself.

Like schedule_free's wrappers, ``param_groups``, ``state`` and ``defaults``
are the base optimizer's (delegated, not copied), and chuck's own scalars go
into ``state_dict()`` under the ``"chuck"`` key, loadable with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from chuck.actions import ActionSpec, Knob
from chuck.guardrails import GuardrailConfig, Guardrails, Verdict
from chuck.monitors import ActivationMonitor, GradientMonitor, LossMonitor, ModelProfile, WeightMonitor, recommend
from chuck.observation import ObservationSpec
from chuck.report import Decision, HealthReport

DecisionListener = Callable[["ChuckOptimizer", Decision], None]

#: Format version of chuck's entry in ``state_dict()``.
STATE_VERSION = 1


class ChuckOptimizer(torch.optim.Optimizer):
    """Wrap a PyTorch optimizer; monitor the run and let ``policy`` adjust it.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (AdamW, Adam, SGD, RMSprop, ...).
        policy: a :class:`chuck.policies.Policy`, a name for :func:`chuck.load_policy`
            (``"constant"``, ``"heuristic"``, ``"default"``, a path, ``"models:/NAME@ALIAS"``), or
            ``None`` for external control (``apply_action`` called by the caller, as the meta-env does).
        model: the model, for activation monitoring, dropout control and architecture advice.
        total_steps: planned number of steps, for the progress feature.
        interval: steps between decisions; defaults to the policy's own, else 20.
        max_grad_norm: initial gradient-clipping threshold (default: off until the policy turns it on).
        guardrails: a :class:`GuardrailConfig`, or ``False`` to disable skip/rollback entirely.
        grad_scaler: a ``torch.amp.GradScaler`` whose skipped steps chuck should detect.
        action_spec: bounds and rate limits of the actions (default :class:`ActionSpec`).
        monitor_window: steps of history the monitors keep (default ``max(50, 5 * interval)``).
        seed: seeds chuck's own sampling (histogram elements, activation units).
        max_decisions: decisions kept in memory (and checkpoints), most recent first; ``None``
            keeps all. At one decision per 20 steps the default covers a million steps; a tracking
            logger keeps the full trail.
        tracking: a decision logger, e.g. :class:`chuck.MLflowDecisionLogger`; it is attached
            here and closed by :meth:`close`.
        history: write a run record when the run ends (``close()``, ``with``, or interpreter
            exit) to ``$CHUCK_HOME/history`` (``True``), to a given directory (a path), or not (``False``).
        label: free text stored with the history record.
        batch_size: stored in the history record's fingerprint (used for warm starts).
        data_size: stored in the history record's fingerprint (used for warm starts).
        ood_fallback: what to do when the observation leaves the range the (learned) policy was
            trained on: ``"heuristic"`` (ask the heuristic policy), ``"hold"``, or ``"off"``.
        ood_margin: tolerance beyond the trained range, as a fraction of that range.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        policy: Any = "constant",
        model: nn.Module | None = None,
        total_steps: int | None = None,
        *,
        interval: int | None = None,
        max_grad_norm: float | None = None,
        guardrails: GuardrailConfig | bool = True,
        grad_scaler: Any | None = None,
        action_spec: ActionSpec | None = None,
        monitor_window: int | None = None,
        seed: int = 0,
        max_decisions: int | None = 50_000,
        tracking: Any | None = None,
        history: bool | str = True,
        label: str = "",
        batch_size: int | None = None,
        data_size: int | None = None,
        ood_fallback: str = "heuristic",
        ood_margin: float = 0.1,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"ChuckOptimizer wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, ChuckOptimizer):
            raise TypeError("this optimizer is already wrapped by ChuckOptimizer")
        if total_steps is not None and total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        # torch.optim.Optimizer bookkeeping that its __init__ would create; we do not call
        # it because param_groups/state/defaults are the base optimizer's (properties below).
        for attr in (
            "_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
            "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks",
        ):
            setattr(self, attr, OrderedDict())
        self.optimizer = optimizer
        self.policy = _resolve_policy(policy)
        self.model = model
        self.total_steps = total_steps
        self.interval = int(interval or (self.policy.interval if self.policy is not None and self.policy.interval else 20))
        if self.interval < 2:
            raise ValueError(f"interval must be >= 2 (updates are sampled on the two steps before a decision), got {self.interval}")
        self.obs_spec = ObservationSpec()
        if self.policy is not None and self.policy.observation_version != self.obs_spec.version:
            raise ValueError(
                f"policy {self.policy.id} was built for observation spec v{self.policy.observation_version}, "
                f"this chuck has v{self.obs_spec.version}"
            )
        self.action_spec = action_spec or ActionSpec()
        if self.policy is not None and self.policy.action_version != self.action_spec.version:
            raise ValueError(
                f"policy {self.policy.id} was built for action spec v{self.policy.action_version}, "
                f"this chuck has v{self.action_spec.version}"
            )
        self.action_spec.bind(optimizer, model, max_grad_norm)
        self.guardrails = Guardrails(guardrails if isinstance(guardrails, GuardrailConfig) else None) if guardrails else None
        self._grad_scaler = grad_scaler
        self._last_scale: float | None = None

        self._generator = torch.Generator().manual_seed(seed)
        window = monitor_window or max(50, 5 * self.interval)
        self._params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        names = _param_names(model, self._params)
        self.loss_monitor = LossMonitor(window=window)
        self.grad_monitor = GradientMonitor(self._params, window=window, generator=self._generator)
        self.weight_monitor = WeightMonitor(self._params, names)
        self.act_monitor = ActivationMonitor(model, generator=self._generator) if model is not None else None
        self._profile = ModelProfile.of(model) if model is not None else None

        self._pending_loss: Any = None
        self._step = 0  # base-optimizer steps taken (skipped steps do not count)
        self._calls = 0  # step() calls
        self._skips_since_decision = 0
        self.decisions: deque[Decision] = deque(maxlen=max_decisions)
        self.metrics: dict[str, float] = {}
        self._listeners: list[DecisionListener] = []
        self._arm_if_due()
        self.tracking = tracking
        if tracking is not None:
            tracking.attach(self)
        if ood_fallback not in ("heuristic", "hold", "off"):
            raise ValueError(f"ood_fallback must be 'heuristic', 'hold' or 'off', got {ood_fallback!r}")
        self.ood_fallback, self.ood_margin = ood_fallback, ood_margin
        self._fallback_policy = None
        self._history = history
        self._history_info = {"label": label, "batch_size": batch_size, "data_size": data_size}
        self._initial_hyperparameters = {k: v for k, v in self.action_spec.hyperparameters().items() if not k.startswith("knob.")}
        self.history_path: str | None = None
        self._closed = False
        if history:
            import atexit
            import weakref

            ref = weakref.ref(self)
            self._atexit = lambda: (o := ref()) is not None and o.close()
            atexit.register(self._atexit)

    # -- delegation (schedule_free style) ---------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer; chuck's monitors and guardrails follow."""
        self.optimizer.add_param_group(param_group)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]
        self.grad_monitor.params = self._params
        self.weight_monitor = WeightMonitor(self._params, _param_names(self.model, self._params))
        if self.guardrails is not None:
            self.guardrails.drop_snapshot()  # it no longer covers every parameter

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._check_scaler()
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        pol = self.policy.id if self.policy is not None else "external"
        return f"ChuckOptimizer({type(self.optimizer).__name__}, policy={pol}, interval={self.interval}, step={self._step})"

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("ChuckOptimizer is not picklable; checkpoint it with state_dict()")

    # -- public read-outs -------------------------------------------------
    @property
    def step_count(self) -> int:
        """Base-optimizer steps taken (skipped and rolled-back steps excluded)."""
        return self._step

    @property
    def hyperparameters(self) -> dict[str, float]:
        """Effective lr, weight decay, clip threshold and dropout right now."""
        return self.action_spec.hyperparameters()

    @property
    def policy_id(self) -> str:
        return self.policy.id if self.policy is not None else "external"

    def add_decision_listener(self, fn: DecisionListener) -> None:
        """Call ``fn(opt, decision)`` after every decision (used by chuck's MLflow logger)."""
        self._listeners.append(fn)

    def record_loss(self, loss: Any) -> None:
        """Give the loss of the coming step, for training loops that call ``step()`` without it
        (Hugging Face Trainer, stable-baselines3). Consumed by the next :meth:`step`."""
        self._pending_loss = loss

    def register_knob(self, name: str, value: float, low: float, high: float, follows: str = "dropout") -> Knob:
        """Register a user hyperparameter chuck may change; read it back as ``knob.value``."""
        return self.action_spec.register_knob(Knob(name, value, low, high, follows))

    # -- the step ---------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None, *, loss: Any = None) -> Any:  # type: ignore[override]
        """Guardrails, clipping, the base step, monitors and (every ``interval`` steps) a decision.

        Pass the loss either as ``loss=`` or through ``closure``; without it chuck still
        watches gradients and weights but not the loss.
        """
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if loss is None and self._pending_loss is not None:
            loss = self._pending_loss
        self._pending_loss = None
        for hook in list(self._optimizer_step_pre_hooks.values()):
            hook(self, (), {})
        self._check_scaler()
        self._calls += 1

        grads = [p.grad for p in self._params if p.grad is not None]
        loss_v, gnorm_v = self._read_scalars(loss, grads)
        verdict = Verdict.OK
        if self.guardrails is not None:
            verdict = self.guardrails.check(loss_v, gnorm_v, self.loss_monitor.median_loss(), self.loss_monitor.history)
        if verdict is not Verdict.OK:
            self._guardrail(verdict, loss_v, gnorm_v)
            return loss
        if self.guardrails is not None:
            self.guardrails.rollbacks_in_a_row = 0

        clip = self.action_spec.clip
        clipped = math.isfinite(clip) and gnorm_v > clip
        if clipped:
            torch._foreach_mul_(grads, clip / (gnorm_v + 1e-6))  # same rule as clip_grad_norm_

        sampled = self._step % self.interval >= self.interval - 2  # the two steps before a decision
        if sampled:
            self.weight_monitor.before_step()
        with self.action_spec.effective():
            self.optimizer.step()
        if sampled:
            self.weight_monitor.after_step()

        self._step += 1
        if loss_v is not None:
            self.loss_monitor.on_step(loss_v)
        self.grad_monitor.on_step(gnorm_v, clipped)
        if self.guardrails is not None and self.guardrails.due(self._step, loss_v, self.loss_monitor.median_loss()):
            self.guardrails.snapshot(self._step, self._params, self.optimizer)
        if self._step % self.interval == 0:
            self._decide()
        self._arm_if_due()
        for hook in list(self._optimizer_step_post_hooks.values()):
            hook(self, (), {})
        return loss

    def _read_scalars(self, loss: Any, grads: list[torch.Tensor]) -> tuple[float | None, float]:
        """Loss and global grad norm as floats: one host sync for both on accelerators.

        On CPU a "sync" is free, so the two values are read directly (fewer ops to dispatch).
        """
        if grads:
            norms = torch._foreach_norm(grads)
            dev = norms[0].device
            gnorm = torch.linalg.vector_norm(torch.stack(norms) if dev.type == "cpu" else torch.stack([n.to(dev) for n in norms]))
        else:
            gnorm, dev = torch.zeros(()), torch.device("cpu")
        if loss is None:
            return None, float(gnorm)
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(f"loss must be a scalar, got a tensor of shape {tuple(loss.shape)}")
            if dev.type == "cpu" and loss.device.type == "cpu":
                return float(loss.detach()), float(gnorm)
            lv, gv = torch.stack([loss.detach().reshape(()).float().to(dev), gnorm.float()]).tolist()
            return lv, gv
        return float(loss), float(gnorm)

    def _check_scaler(self) -> None:
        """Count GradScaler-skipped steps: the scaler shrinks its scale exactly when it skips."""
        if self._grad_scaler is None or not self._grad_scaler.is_enabled():
            return
        scale = float(self._grad_scaler.get_scale())
        if self._last_scale is not None and scale < self._last_scale:
            self._skips_since_decision += 1
            if self.guardrails is not None:
                self.guardrails.skips += 1
            self._record("guardrail", [], "amp_overflow: GradScaler skipped the step (not counted as progress)")
        self._last_scale = scale

    def _guardrail(self, verdict: Verdict, loss_v: float | None, gnorm_v: float) -> None:
        g = self.guardrails
        assert g is not None
        self._skips_since_decision += 1
        if verdict is Verdict.ROLLBACK_SPIKE and g.rollbacks_in_a_row >= g.config.max_rollbacks_in_a_row:
            # the same "spike" survived every rollback: the loss level has shifted for good
            g.rollbacks_in_a_row = 0
            g.skips += 1
            self.loss_monitor.reset_spike_reference()
            self._record("guardrail", [], f"accept_level_shift: loss {loss_v:.4g} stayed above {g.config.spike_factor:g} x "
                         f"the old median after {g.config.max_rollbacks_in_a_row} rollbacks; spike reference reset")
            return
        if verdict is Verdict.ROLLBACK_SPIKE and g.has_snapshot:
            g.restore(self._params, self.optimizer)
            g.rollbacks += 1
            g.rollbacks_in_a_row += 1
            reason = (f"rollback_spike: loss {loss_v:.4g} > {g.config.spike_factor:g} x median "
                      f"{self.loss_monitor.median_loss():.4g}; restored step {g.snapshot_step}")
        else:
            g.skips += 1
            reason = f"{verdict.value}: loss={loss_v}, grad_norm={gnorm_v}; step skipped, weights untouched"
        self.action_spec.backoff(g.config.backoff)
        self._record("guardrail", [], reason)

    # -- decisions --------------------------------------------------------
    def _arm_if_due(self) -> None:
        # Activations are sampled on the forward pass that precedes a decision step.
        if self.act_monitor is not None and (self._step + 1) % self.interval == 0:
            self.act_monitor.arm()

    def _decide(self) -> None:
        self.grad_monitor.on_decision(self.optimizer)
        self.weight_monitor.on_decision()
        if self.act_monitor is not None:
            self.act_monitor.on_decision()
        if self.policy is None:
            return  # external control: the caller reads observation() and calls apply_action()
        obs = self.observation()
        action, source, reason = self._ask_policy(obs)
        self.apply_action(action, source=source, reason=reason, observation=obs)

    def _ask_policy(self, obs: np.ndarray) -> tuple[np.ndarray, str, str]:
        """The policy's action, or a hold when it fails: user training never crashes because of chuck."""
        assert self.policy is not None
        try:
            raw = self.policy.act(obs.copy())
            action = np.asarray(raw, dtype=np.float64).reshape(-1)
        except Exception as exc:  # noqa: BLE001 - any policy failure means hold
            return self._hold(f"policy raised {type(exc).__name__}: {exc}")
        if action.shape != (len(self.action_spec.dims),):
            return self._hold(f"policy returned shape {action.shape}, expected ({len(self.action_spec.dims)},)")
        if not np.all(np.isfinite(action)):
            return self._hold("policy returned non-finite values")
        ood = getattr(self.policy, "out_of_distribution", None)
        if ood is not None and self.ood_fallback != "off":
            outside = ood(obs, margin=self.ood_margin)
            if outside:
                why = f"out of distribution ({', '.join(outside[:4])}{'...' if len(outside) > 4 else ''})"
                if self.ood_fallback == "hold":
                    return self._hold(why)
                if self._fallback_policy is None:
                    from chuck.policies.heuristic import HeuristicPolicy

                    self._fallback_policy = HeuristicPolicy()
                return np.asarray(self._fallback_policy.act(obs), dtype=np.float64), "fallback", f"{why}: heuristic"
        return action, "policy", ""

    def _hold(self, reason: str) -> tuple[np.ndarray, str, str]:
        return np.zeros(len(self.action_spec.dims)), "fallback", f"hold: {reason}"

    def stats(self) -> dict[str, float]:
        """Every raw statistic the monitors and the controller expose (the observation's source)."""
        out: dict[str, float] = {}
        out.update(self.loss_monitor.stats())
        out.update(self.grad_monitor.stats())
        out.update(self.weight_monitor.stats())
        if self.act_monitor is not None:
            out.update(self.act_monitor.stats())
        out.update(self.action_spec.control_stats(self._median_grad_norm()))
        out["ctrl.progress"] = min(1.0, self._step / self.total_steps) if self.total_steps else math.nan
        out["ctrl.has_total"] = 1.0 if self.total_steps else 0.0
        out["ctrl.skip_rate"] = self._skips_since_decision / self.interval
        return out

    def observation(self) -> np.ndarray:
        """The policy's observation now (``ObservationSpec.encode`` of :meth:`stats`)."""
        return self.obs_spec.encode(self.stats())

    def apply_action(
        self,
        action: np.ndarray | list[float],
        *,
        source: str = "external",
        reason: str = "",
        observation: np.ndarray | None = None,
    ) -> Decision:
        """Apply one action through :class:`ActionSpec` and record the decision.

        The meta-environment calls this with ``source="external"``; the optimizer itself
        with the policy's action every ``interval`` steps.
        """
        obs = self.observation() if observation is None else observation
        result = self.action_spec.apply(action, self._median_grad_norm())
        attribution: dict[str, float] = {}
        if source == "policy" and self.policy is not None:
            try:
                attribution = {k: float(v) for k, v in self.policy.explain(obs).items()}
            except Exception:  # noqa: BLE001 - explanations are best effort
                attribution = {}
            if attribution:
                top = sorted(attribution.items(), key=lambda kv: -abs(kv[1]))[:3]
                reason = reason or "driven by " + ", ".join(k for k, _ in top)
        if result.limited:
            reason = (reason + "; " if reason else "") + "at bound: " + ", ".join(result.limited)
        self._skips_since_decision = 0
        return self._record(source, result.action, reason, obs, attribution, result.hyperparameters)

    def _record(self, source: str, action: list[float], reason: str, obs: np.ndarray | None = None,
                attribution: dict[str, float] | None = None, hyperparameters: dict[str, float] | None = None) -> Decision:
        d = Decision(
            step=self._step,
            source=source,
            action=[float(a) for a in action],
            observation=self.obs_spec.as_dict(obs) if obs is not None else {},
            hyperparameters=hyperparameters if hyperparameters is not None else self.action_spec.hyperparameters(),
            reason=reason,
            attribution=attribution or {},
            policy_id=self.policy_id,
        )
        self.decisions.append(d)
        for fn in self._listeners:
            try:
                fn(self, d)
            except Exception as exc:  # noqa: BLE001 - a listener must never break training
                warnings.warn(f"chuck decision listener {fn!r} failed: {exc}", RuntimeWarning, stacklevel=2)
        return d

    def _median_grad_norm(self) -> float:
        return self.grad_monitor.median_norm()

    # -- user-facing ------------------------------------------------------
    def observe(self, val_loss: float | torch.Tensor | None = None, **metrics: float) -> None:
        """Report an evaluation: the validation loss (for overfitting) and any other metrics."""
        if val_loss is not None:
            v = float(val_loss.detach()) if isinstance(val_loss, torch.Tensor) else float(val_loss)
            if math.isfinite(v):
                self.loss_monitor.on_validation(self._step, v)
            metrics["val_loss"] = v
        self.metrics.update({k: float(v) for k, v in metrics.items()})

    def health(self) -> HealthReport:
        """Every indicator (value, status, reason, recommendation) plus architecture advice."""
        indicators = self.loss_monitor.indicators() + self.grad_monitor.indicators() + self.weight_monitor.indicators()
        if self.act_monitor is not None:
            indicators += self.act_monitor.indicators()
        return HealthReport(
            step=self._step,
            indicators=indicators,
            recommendations=recommend(self._profile, self.stats()),
            hyperparameters=self.action_spec.hyperparameters(),
        )

    # -- end of run -------------------------------------------------------
    def close(self) -> None:
        """End the run: write the history record and close the tracking logger. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if getattr(self, "_atexit", None) is not None:
            import atexit

            atexit.unregister(self._atexit)
        if self._history and self._step > 0:
            self._write_history()
        if self.tracking is not None:
            try:
                self.tracking.close()
            except Exception as exc:  # noqa: BLE001 - closing must never raise into user code
                warnings.warn(f"chuck: closing the tracking logger failed: {exc}", RuntimeWarning, stacklevel=2)

    def _write_history(self) -> None:
        try:
            from chuck.history import record_from_optimizer, write_record

            record = record_from_optimizer(self, **self._history_info)
            directory = self._history if isinstance(self._history, str) else None
            self.history_path = str(write_record(record, directory))
        except ImportError as exc:
            warnings.warn(f"chuck: run history needs polars ({exc}); no record written", RuntimeWarning, stacklevel=3)
        except Exception as exc:  # noqa: BLE001 - a history failure must never break the user's run
            warnings.warn(f"chuck: could not write the run history record: {exc}", RuntimeWarning, stacklevel=3)

    def __enter__(self) -> ChuckOptimizer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- checkpoints ------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        sd = self.optimizer.state_dict()
        sd["chuck"] = {
            "version": STATE_VERSION,
            "step": self._step,
            "calls": self._calls,
            "skips_since_decision": self._skips_since_decision,
            "interval": self.interval,
            "action": self.action_spec.state_dict(),
            "guardrails": self.guardrails.state_dict() if self.guardrails is not None else None,
            "monitors": {
                "loss": self.loss_monitor.state_dict(),
                "grad": self.grad_monitor.state_dict(),
                "weights": self.weight_monitor.state_dict(),
                "act": self.act_monitor.state_dict() if self.act_monitor is not None else None,
            },
            "rng": self._generator.get_state(),
            "policy_id": self.policy_id,
            "policy_state": self.policy.state_dict() if self.policy is not None else {},
            "decisions": [d.as_dict() for d in self.decisions],
            "metrics": dict(self.metrics),
            "last_scale": self._last_scale,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        state_dict = dict(state_dict)
        chuck_state = state_dict.pop("chuck", None)
        self.optimizer.load_state_dict(state_dict)
        if chuck_state is None:
            warnings.warn("state_dict has no 'chuck' entry (a bare optimizer checkpoint?): chuck starts fresh",
                          RuntimeWarning, stacklevel=2)
            return
        if chuck_state.get("version") != STATE_VERSION:
            raise ValueError(f"chuck state version {chuck_state.get('version')} is not supported (expected {STATE_VERSION})")
        if chuck_state["policy_id"] != self.policy_id:
            warnings.warn(f"checkpoint was written under policy {chuck_state['policy_id']}, resuming under {self.policy_id}",
                          RuntimeWarning, stacklevel=2)
        self._step, self._calls = chuck_state["step"], chuck_state["calls"]
        self._skips_since_decision = chuck_state["skips_since_decision"]
        self.action_spec.load_state_dict(chuck_state["action"])
        if self.guardrails is not None and chuck_state["guardrails"] is not None:
            self.guardrails.load_state_dict(chuck_state["guardrails"])
        mons = chuck_state["monitors"]
        self.loss_monitor.load_state_dict(mons["loss"])
        self.grad_monitor.load_state_dict(mons["grad"])
        self.weight_monitor.load_state_dict(mons["weights"])
        if self.act_monitor is not None and mons["act"] is not None:
            self.act_monitor.load_state_dict(mons["act"])
        self._generator.set_state(chuck_state["rng"])
        if self.policy is not None and chuck_state["policy_state"]:
            self.policy.load_state_dict(chuck_state["policy_state"])
        self.decisions = deque((Decision.from_dict(d) for d in chuck_state["decisions"]), maxlen=self.decisions.maxlen)
        self.metrics = dict(chuck_state["metrics"])
        self._last_scale = chuck_state["last_scale"]
        if self.act_monitor is not None:
            self.act_monitor.disarm()
        self._arm_if_due()


def _resolve_policy(policy: Any):
    from chuck.policies.base import Policy

    if policy is None or isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        from chuck.loading import load_policy

        return load_policy(policy)
    raise TypeError(f"policy must be a chuck Policy, a name/path/URI string, or None; got {type(policy).__name__}")


def _param_names(model: nn.Module | None, params: Iterable[torch.Tensor]) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    return [by_id.get(id(p), f"param{i}") for i, p in enumerate(params)]
