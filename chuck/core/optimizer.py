"""ChuckOptimizer: a torch.optim.Optimizer that monitors a run and lets a policy steer it.

One code path serves deployment and meta-training::

    loss.backward() -> opt.step(loss=loss)            (or opt.step(closure), LBFGS included)
      -> guardrails: non-finite? skip. spike? roll back. lasting shift? accept   chuck.core.guardrails
      -> clip (if on) -> base step with lr = theirs x multiplier                  chuck.core.actions
      -> monitor suite: per-step hooks; sampled hooks before a decision           chuck.monitors
      -> Controller: decision due? observe -> policy (checked) -> ActionSpec      chuck.core.controller

``chuck.envs`` drives the very same object with ``policy=None``: the controller then
leaves the observation pending and the env supplies the action
(:meth:`Controller.act_external`), on the same clock.

Like schedule_free's wrappers, ``param_groups``, ``state`` and ``defaults`` are the
base optimizer's (delegated, not copied), and chuck's own state goes into
``state_dict()`` under the ``"chuck"`` key, loadable with ``torch.load(weights_only=True)``.
The learning rate in use is ``group["lr"] x`` chuck's multiplier; chuck publishes it on every
group under ``group["chuck_effective_lr"]`` (:meth:`ChuckOptimizer.effective_lrs`).
The torch.optim contract holds: step pre/post hooks (per optimizer and global) fire
with the arguments torch passes, post hooks also on skipped steps; state-dict hooks
fire; every ``register_*`` returns a ``RemovableHandle``. Global step hooks see the
wrapper's step and the base optimizer's (when it really updates), as with any
optimizer that wraps another.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
from torch.utils.hooks import RemovableHandle

from chuck.core.actions import EFFECTIVE_LR_KEY, LATEST_ACTION_VERSION, ActionSpec, Knob
from chuck.core.advice import Advisor
from chuck.core.checkpoint import STATE_VERSION, CheckpointError, chuck_state, load_checkpoint
from chuck.core.controller import Controller, DecisionHook, observation_version_for
from chuck.core.defaults import DEFAULT_INTERVAL
from chuck.core.distributed import rank_sync
from chuck.core.guardrails import NONFINITE_WARN_AFTER, Action, GuardrailConfig, Guardrails, Response, ValidationVote, Verdict
from chuck.core.inputs import (
    as_float,
    check_spec_versions,
    needs_closure,
    read_scalars,
    reported_number,
    resolve_policy,
    whole_number,
)
from chuck.core.observation import ObservationSpec
from chuck.core.report import Decision, DecisionLog, HealthReport
from chuck.core.run_record import RunLedger
from chuck.core.safe_start import SafeStart, SafeStartConfig
from chuck.monitors import (
    ActivationMonitor,
    ControlMonitor,
    GradientMonitor,
    LossMonitor,
    ModelProfile,
    Monitor,
    MonitorContext,
    MonitorSuite,
    StepRecord,
    WeightMonitor,
    recommend,
)
from chuck.monitors.stepsize import StepSizeMonitor

__all__ = ["ChuckOptimizer", "CheckpointError", "STATE_VERSION"]

#: Decisions a checkpoint carries (the most recent): about 3 kB each with their observations, so a
#: checkpoint's chuck entry stays near a few MiB however long the run.
CHECKPOINT_DECISIONS = 1000


class _SkipStep(Exception):
    """Raised inside a wrapped closure to stop a closure-driven base step (LBFGS) before it updates."""


class ChuckOptimizer(torch.optim.Optimizer):
    """Wrap a PyTorch optimizer; monitor the run and let ``policy`` adjust it.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (AdamW, Adam, SGD, RMSprop, LBFGS, SparseAdam, ...).
        policy: a :class:`chuck.policies.Policy`, a name for :func:`chuck.load_policy`
            (``"constant"``, ``"heuristic"``, ``"default"``, a path, ``"models:/NAME@ALIAS"``), or
            ``None`` for external control (the meta-env supplies the actions). A policy keeps state
            for the run it steers (a prior's cooldown, its decision count), so a policy object that
            already steers another live optimizer is copied for this one (two models trained side by
            side, as in a GAN, each get their own).
        model: the model, for activation monitoring, dropout control and architecture advice.
        total_steps: planned number of optimizer steps (``step()`` calls), for the progress feature: a
            policy plans the end of the run (a cooldown) for it, and chuck warns once if the run goes past it.
        interval: successful steps between decisions; defaults to the policy's own, else ``DEFAULT_INTERVAL`` (20).
        warmup: steps of linear lr warm-up at the start of the run (step k runs at (k + 1) /
            warmup of the lr); defaults to the policy's own (``Policy.warmup``), else none.
        anneal: share of ``total_steps`` over which the lr decays linearly toward zero at the end of the
            run, applied per step (warmup-stable-decay); defaults to the policy's own (``Policy.anneal``),
            else none. Needs ``total_steps``.
        safe_start: a range test over the run's first steps (:mod:`chuck.core.safe_start`): the warm-up
            starts with a geometric ramp from 1e-3 of the lr, and at the first sign of blow-up during the
            warm-up the ramp stops, the best weights seen are put back and the lr settles below where the
            loss stopped falling.
            ``True``, a :class:`~chuck.core.safe_start.SafeStartConfig`, ``False``, or ``None`` (the
            default): the policy's choice (``Policy.safe_start``; off when the policy does not say).
        max_grad_norm: initial gradient-clipping threshold (default: off until the policy turns it on).
        guardrails: a :class:`GuardrailConfig` (its thresholds), ``True`` for the default one, ``False`` for
            none, or ``None`` (the default): the policy's choice (``Policy.guardrails_by_default``), on under
            every policy that steers the run, off under ``"constant"``, which only observes.
        grad_scaler: a ``torch.amp.GradScaler`` whose skipped steps chuck should detect.
        action_spec: bounds and rate limits of the actions (default :class:`ActionSpec`).
        monitors: extra :class:`chuck.monitors.Monitor` instances (their statistics reach
            :meth:`stats` and their indicators :meth:`health`).
        monitor_window: steps of history the monitors keep (default ``max(50, 5 * interval)``).
        seed: seeds chuck's own sampling (histogram elements, activation units).
        max_decisions: decisions kept in memory, most recent last; ``None`` keeps all. A checkpoint
            carries the last ``CHECKPOINT_DECISIONS`` of them; a tracking logger keeps the full trail.
        tracking: a decision logger, e.g. :class:`chuck.MLflowDecisionLogger`; it is attached
            here and closed by :meth:`close`.
        history: write a run record when the run ends (``close()``, ``with``, garbage
            collection or interpreter exit) to ``$CHUCK_HOME/history`` (``True``), to a given
            directory (a path), or not (``False``).
        label: free text stored with the history record.
        batch_size: stored in the history record's fingerprint (used for warm starts).
        data_size: stored in the history record's fingerprint (used for warm starts).
        ood_fallback: what to do when the observation leaves the range the (learned) policy was
            trained on: ``"heuristic"`` (ask the heuristic policy), ``"hold"``, or ``"off"``.
        ood_margin: tolerance beyond the trained range, as a fraction of that range.
        observation_version: the observation spec chuck encodes when the run is under external control
            (``policy=None``: the agent's, as the meta-environment's); default the newest. A policy reads
            its own spec, and naming another one for it raises ``ValueError``.
        process_group: under data parallelism, the ranks that agree on every guardrail verdict and
            decision (:mod:`chuck.core.distributed`): ``None`` means the default group whenever
            ``torch.distributed`` is initialized with more than one rank; ``False`` never agrees.

    Attributes:
        advise: ``True`` (the default): chuck says once a run, as a ``RuntimeWarning`` at the loop's
            ``opt.step``, what needs attention: no step has given the loss by the first decision (the
            loss monitors and the policy's loss inputs are blind), twenty steps in a row were
            non-finite, or the run goes on after ``close()``. Set it to ``False`` where nobody reads it
            (meta-training, benchmark runs) or where the loop has no loss to give (stable-baselines3).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        policy: Any = "constant",
        model: nn.Module | None = None,
        total_steps: int | None = None,
        *,
        interval: int | None = None,
        warmup: int | None = None,
        anneal: float | None = None,
        safe_start: SafeStartConfig | bool | None = None,
        max_grad_norm: float | None = None,
        guardrails: GuardrailConfig | bool | None = None,
        grad_scaler: Any | None = None,
        action_spec: ActionSpec | None = None,
        monitors: Sequence[Monitor] = (),
        monitor_window: int | None = None,
        seed: int = 0,
        max_decisions: int | None = 10_000,
        tracking: Any | None = None,
        history: bool | str = True,
        label: str = "",
        batch_size: int | None = None,
        data_size: int | None = None,
        ood_fallback: str = "heuristic",
        ood_margin: float = 0.1,
        observation_version: str | int | None = None,
        process_group: Any = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"ChuckOptimizer wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, ChuckOptimizer):
            raise TypeError("this optimizer is already wrapped by ChuckOptimizer")
        total_steps = whole_number("total_steps", total_steps, 1)
        interval = whole_number("interval", interval, 2)
        warmup = whole_number("warmup", warmup, 0)
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be the torch.nn.Module being trained (or None), got {type(model).__name__}")
        # torch.optim.Optimizer.__init__ would build param_groups/state/defaults of its own; here
        # they are the base optimizer's (properties below), so we set up only its hook registries
        # (step() fires them, see there).
        self._optimizer_step_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict[int, Callable] = OrderedDict()
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"

        self.optimizer = optimizer
        self.model = model
        self.total_steps = total_steps
        # the first step past the budget, said once (see _past_budget); -1: no budget to pass
        self._past_budget_at = total_steps + 1 if total_steps is not None else -1
        resolved = resolve_policy(policy)
        self.interval = int(interval or (resolved.interval if resolved is not None and resolved.interval else DEFAULT_INTERVAL))
        check_spec_versions(resolved, action_spec)
        observation_version = observation_version_for(resolved, observation_version)  # before anything is bound
        self.action_spec = action_spec or ActionSpec(
            version=resolved.action_version if resolved is not None else LATEST_ACTION_VERSION
        )
        self.action_spec.bind(optimizer, model, max_grad_norm)
        warmup = warmup if warmup is not None else getattr(resolved, "warmup", None)
        self.action_spec.start_warmup(warmup or 0)
        anneal = anneal if anneal is not None else getattr(resolved, "anneal", None)
        if anneal and total_steps is not None:
            self.action_spec.start_anneal(total_steps, anneal)
        if safe_start is None:  # the policy's choice; off unless it asks
            safe_start = resolved is not None and bool(resolved.safe_start)
        if not isinstance(safe_start, (bool, SafeStartConfig)):
            raise TypeError(f"safe_start must be a SafeStartConfig, True, False or None, got {type(safe_start).__name__}")
        #: the safe start's range test (``None``: off)
        self.safe_start: SafeStart | None = None
        if safe_start:
            ss = safe_start if isinstance(safe_start, SafeStartConfig) else SafeStartConfig()
            window = self.action_spec.warmup_steps or self.interval
            ramp = ss.steps or max(2, window // 2)
            self.action_spec.ramp_geometric(ss.start, ramp)
            warm = self.action_spec.warmup_steps
            self.safe_start = SafeStart(ss, ramp, ss.watch or warm + ss.window, warm, self.action_spec.warmup_factor)
        if guardrails is None:  # the policy's own choice: on under every policy that steers, off for a pure observer
            guardrails = resolved is None or resolved.guardrails_by_default
        if not isinstance(guardrails, (bool, GuardrailConfig)):
            raise TypeError(f"guardrails must be a GuardrailConfig, True, False or None, got {type(guardrails).__name__}")
        self.guardrails = Guardrails(guardrails if isinstance(guardrails, GuardrailConfig) else None) if guardrails else None
        self._grad_scaler = grad_scaler
        self._last_scale: float | None = None
        self._closure_driven = needs_closure(optimizer)
        self._generator = torch.Generator().manual_seed(seed)

        window = monitor_window or max(50, 5 * self.interval)
        names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        self._ctx = MonitorContext(optimizer, model, self._generator, names)
        self._grad_monitor = GradientMonitor(window=window)
        self.control = ControlMonitor(self.action_spec, self.interval, total_steps, self._grad_monitor.median_norm)
        self._loss_monitor = LossMonitor(window=window)
        builtin: list[Monitor] = [self._loss_monitor, self._grad_monitor, WeightMonitor(), StepSizeMonitor()]
        if model is not None:
            builtin.append(ActivationMonitor(model))
        self.monitors = MonitorSuite([*builtin, self.control, *monitors], self._ctx)
        self._profile = ModelProfile.of(model) if model is not None else None
        self.controller = Controller(
            resolved,
            self.action_spec,
            self.monitors,
            self.control,
            interval=self.interval,
            owner=self,
            ood_fallback=ood_fallback,
            ood_margin=ood_margin,
            max_decisions=max_decisions,
            observation_version=observation_version,
        )
        # data parallelism: one all-reduce per step replaces the scalar read; rank 0 decides for all
        self._ranks = rank_sync(process_group, optimizer, model, action_dims=len(self.action_spec.dims))
        self.controller.ranks = self._ranks
        self.read_scalars = read_scalars if self._ranks is None else self._ranks.read_scalars
        leader = self._ranks is None or self._ranks.is_leader  # the one rank that logs and writes history
        if not self._ctx.params:
            warnings.warn(
                "chuck: no parameter of this optimizer requires a gradient; chuck watches nothing until one does",
                RuntimeWarning,
                stacklevel=2,
            )

        self._pending_loss: Any = None
        self._val_vote: int = ValidationVote.NONE  # what the last observe() asked of the next step
        self._step = 0  # base-optimizer steps taken (skipped steps do not count)
        self._calls = 0  # step() calls
        self.metrics: dict[str, float] = {}
        self._arm_if_due()
        self.tracking = tracking
        if tracking is not None and leader:
            tracking.attach(self)
        self.history_path: str | None = None
        self._closed = False
        self.advisor = Advisor()  # ``advise`` turns it on and off
        self._ledger = RunLedger.start(
            self, history if leader else False, {"label": label, "batch_size": batch_size, "data_size": data_size}
        )

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
        if self.guardrails is not None:
            self.guardrails.drop_snapshot()  # it no longer covers every parameter
        self.action_spec.publish()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._check_scaler()
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self) -> str:
        return f"ChuckOptimizer({type(self.optimizer).__name__}, policy={self.policy_id}, interval={self.interval}, step={self._step})"

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("ChuckOptimizer is not picklable; checkpoint it with state_dict()")

    @property
    def advise(self) -> bool:
        """Whether chuck says what needs attention (see the class docstring)."""
        return self.advisor.enabled

    @advise.setter
    def advise(self, on: bool) -> None:
        self.advisor.enabled = bool(on)

    # -- public read-outs -------------------------------------------------
    @property
    def policy(self) -> Any:
        return self.controller.policy

    @property
    def policy_id(self) -> str:
        return self.controller.policy_id

    @property
    def decisions(self) -> DecisionLog:
        """Every decision so far (bounded by ``max_decisions``); indexes and slices like a list."""
        return self.controller.decisions

    @property
    def step_count(self) -> int:
        """Base-optimizer steps taken (skipped and rolled-back steps excluded)."""
        return self._step

    @property
    def calls(self) -> int:
        """``step()`` calls made (skipped steps included)."""
        return self._calls

    @property
    def hyperparameters(self) -> dict[str, float]:
        """Effective lr, weight decay, clip threshold and dropout right now."""
        return self.action_spec.hyperparameters()

    def effective_lrs(self) -> list[float]:
        """The lr each param group's next base step uses: its ``lr`` times chuck's multiplier.

        ``group["lr"]`` keeps the user's (or their scheduler's) value; chuck publishes the
        effective one on every group under ``group["chuck_effective_lr"]``
        (:data:`chuck.EFFECTIVE_LR_KEY`) after every step and decision. This reads it fresh,
        after whatever a scheduler wrote since the last step: what the integrations log.
        """
        self.action_spec.publish()
        return [as_float(g[EFFECTIVE_LR_KEY]) for g in self.optimizer.param_groups if EFFECTIVE_LR_KEY in g]

    @property
    def obs_spec(self) -> ObservationSpec:
        return self.controller.obs_spec

    @property
    def loss_monitor(self) -> LossMonitor:
        return self._loss_monitor

    @property
    def grad_monitor(self) -> GradientMonitor:
        return self._grad_monitor

    @property
    def weight_monitor(self) -> WeightMonitor:
        return self.monitors["weights"]  # type: ignore[return-value]

    @property
    def act_monitor(self) -> ActivationMonitor | None:
        return self.monitors.get("act")  # type: ignore[return-value]

    def register_decision_hook(self, hook: DecisionHook) -> RemovableHandle:
        """Call ``hook(opt, decision)`` after every decision (chuck's MLflow logger uses this)."""
        return self.controller.register_decision_hook(hook)

    def add_decision_listener(self, fn: DecisionHook) -> None:
        """Deprecated: use :meth:`register_decision_hook`, which returns a handle."""
        warnings.warn(
            "add_decision_listener is deprecated; use register_decision_hook (it returns a handle)",
            DeprecationWarning,
            stacklevel=2,
        )
        self.register_decision_hook(fn)

    def record_loss(self, loss: Any) -> None:
        """Give the loss of the coming step, for training loops that call ``step()`` without it
        (Hugging Face Trainer, stable-baselines3). Consumed by the next :meth:`step`."""
        self._pending_loss = loss

    def register_knob(self, name: str, value: float, low: float, high: float, follows: str = "dropout") -> Knob:
        """Register a user hyperparameter chuck may change; read it back as ``knob.value``."""
        return self.action_spec.register_knob(Knob(name, value, low, high, follows))

    # -- the step ---------------------------------------------------------
    def step(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Guardrails, clipping, the base step, monitors and (every ``interval`` steps) a decision.

        Call it as ``step(loss=loss)``, ``step(closure)`` (the closure's return value is the loss)
        or ``step()``; without a loss chuck still watches gradients and weights but not the loss.
        Optimizers that need a closure (LBFGS) get it, wrapped so that the guardrails judge its
        first evaluation.

        Step hooks fire as torch fires them (global pre hooks, then this optimizer's; the post
        hooks after, on skipped steps too), with ``(self, args, kwargs)`` where ``args`` starts with
        the optimizer, and a pre hook may return new ``(args, kwargs)``. torch's own wrapper does
        the same inside a profiler record; that record costs more than chuck's whole per-step
        work on small models (about 10-60 us), so chuck calls the hooks itself.
        """
        call = (self, *args)
        if _global_optimizer_pre_hooks or self._optimizer_step_pre_hooks:
            for pre_hook in (*_global_optimizer_pre_hooks.values(), *self._optimizer_step_pre_hooks.values()):
                result = pre_hook(self, call, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(f"a step pre hook must return None or (new_args, new_kwargs), got {result!r}")
                    call, kwargs = result
        out = self._run_step(*call[1:], **kwargs)
        # after the decision (if one was due) and on skipped steps too: the groups say the lr in use
        self.action_spec.publish()
        if self._optimizer_step_post_hooks or _global_optimizer_post_hooks:
            for post_hook in (*self._optimizer_step_post_hooks.values(), *_global_optimizer_post_hooks.values()):
                post_hook(self, call, kwargs)
        return out

    step.hooked = True  # type: ignore[attr-defined]  # torch's _patch_step_function must not wrap it again

    def _run_step(self, closure: Callable[[], Any] | None = None, *, loss: Any = None) -> Any:
        self._calls += 1
        if self._closed:
            self.advisor.step_after_close()
        self._check_scaler()
        if self._closure_driven:
            return self._closure_step(closure)
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if loss is None:
            loss = self._pending_loss
        self._pending_loss = None
        self._snapshot_start()
        grads = self._grads()
        vote, self._val_vote = self._val_vote, ValidationVote.NONE
        loss_v, gnorm_v, vote = self.read_scalars(loss, grads, vote)
        if vote and self._act_on_vote(vote):
            return loss
        if self.safe_start is not None and self._safe_start_stops(loss_v, gnorm_v):
            return loss
        verdict = self._judge(loss_v, gnorm_v)
        if verdict is not Verdict.OK:
            self._intervene(verdict, loss_v, gnorm_v)
            return loss
        if self._restarts(loss_v, gnorm_v):
            return loss
        clipped = self._clip(grads, gnorm_v)
        self._update(self.optimizer.step)
        self._after_update(loss_v, gnorm_v, clipped)
        return loss

    def _closure_step(self, closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            raise TypeError(f"{type(self.optimizer).__name__} evaluates the loss itself: call opt.step(closure)")
        first: dict[str, Any] = {}
        self._snapshot_start()

        def guarded() -> Any:
            with torch.enable_grad():
                out = closure()
            if not first:  # the first evaluation happens before the base optimizer changes anything
                grads = self._grads()
                vote, self._val_vote = self._val_vote, ValidationVote.NONE
                first["loss"], first["gnorm"], vote = self.read_scalars(out, grads, vote)
                if vote and self._act_on_vote(vote):
                    first["verdict"] = None
                    raise _SkipStep
                if self.safe_start is not None and self._safe_start_stops(first["loss"], first["gnorm"]):
                    first["verdict"] = None
                    raise _SkipStep
                first["verdict"] = self._judge(first["loss"], first["gnorm"])
                if first["verdict"] is not Verdict.OK:
                    raise _SkipStep
                if self._restarts(first["loss"], first["gnorm"]):
                    first["verdict"] = None
                    raise _SkipStep
                first["clipped"] = self._clip(grads, first["gnorm"])
            return out

        try:
            loss = self._update(lambda: self.optimizer.step(guarded))
        except _SkipStep:
            if first["verdict"] is not None:  # None: the overfitting rollback took the step
                self._intervene(first["verdict"], first["loss"], first["gnorm"])
            return None
        self._after_update(first["loss"], first["gnorm"], first["clipped"])
        return loss

    def _snapshot_start(self) -> None:
        """Before the run's first update, keep its starting state: an lr far too high can blow the
        weights up within the first few steps, before any periodic snapshot exists to go back to."""
        g = self.guardrails
        if g is None or self._step != 0:
            return
        if not g.has_snapshot and g.config.snapshot_every > 0:
            g.snapshot(0, self._ctx.params, self.optimizer)
        g.start.begin(self._ctx.params, self.optimizer, self._buffers())

    def _restarts(self, loss_v: float | None, gnorm_v: float) -> bool:
        """The start guard's blow-up test on a step the other guardrails passed, before its update; ``True``:
        the run went back to its start (the update must not run on the blown-up weights). A jump the spike
        test skips never reaches it: a blow-up climbs over several steps."""
        g = self.guardrails
        if g is None or not g.start.active:
            return False
        response = g.blew_up(loss_v, gnorm_v, self._ctx.params)
        if response is None:
            return False
        if self.safe_start is not None:
            self.safe_start.finish()  # its losses and best weights belong to the run that blew up
        self._carry_out(response)
        return True

    def _grads(self) -> list[torch.Tensor]:
        # Every parameter of every group, whenever it has a gradient: a layer unfrozen mid-run is
        # covered by the guardrails from its first gradient on.
        return [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def _act_on_vote(self, vote: int) -> bool:
        """Carry out the (agreed) validation vote before this step's update; ``True``: the step is
        taken by a rollback (its gradients were computed on the weights being thrown away)."""
        g = self.guardrails
        if g is None:
            return False
        params = self._ctx.params
        if vote == ValidationVote.SNAPSHOT:
            # nothing has changed the weights since the evaluation that asked for it
            g.take_best(self._step, params, self.optimizer, self.action_spec.lr_mult, self._buffers())
            return False
        response = g.respond_to_vote(vote, params, self.action_spec.lr_mult)
        if response is None:
            return False
        self._carry_out(response)
        return True

    def _safe_start_stops(self, loss_v: float | None, gnorm_v: float) -> bool:
        """The safe start's blow-up test, before the update; ``True``: it took the step (the ramp stopped,
        the best weights of the ramp are back, the lr multiplier settled), so the update must not run."""
        ss = self.safe_start
        assert ss is not None
        if not ss.active:
            return False
        stop = ss.check(self._step, loss_v, gnorm_v, self._ctx.params, self.optimizer, self._buffers())
        if stop is None:
            return False
        spec = self.action_spec
        if stop.restore:
            ss.restore(self._ctx.params, self.optimizer, self._buffers())
        before = spec.lr_mult
        spec.end_warmup(self._step)
        spec.scale_lr(stop.lr_factor)
        self.controller.record("guardrail", [], f"{stop.reason}; lr multiplier {before:.3g} -> {spec.lr_mult:.3g}", self._step)
        return True

    def _buffers(self) -> list[torch.Tensor]:
        """The model's buffers (batch-norm statistics ...), for the best-validation snapshot; none without ``model``."""
        return list(self.model.buffers()) if isinstance(self.model, torch.nn.Module) else []

    def _judge(self, loss_v: float | None, gnorm_v: float) -> Verdict:
        g = self.guardrails
        if g is None:
            return Verdict.OK
        verdict = g.check(loss_v, gnorm_v, self._loss_monitor.initial_loss())
        if g.noisy:
            self.advisor.noisy_loss(g)
        return verdict

    def _clip(self, grads: list[torch.Tensor], gnorm_v: float) -> bool:
        clip = self.action_spec.clip
        if not (math.isfinite(clip) and gnorm_v > clip):
            return False
        scale = clip / (gnorm_v + 1e-6)  # the rule of clip_grad_norm_
        dense = [g for g in grads if not g.is_sparse]
        if dense:
            torch._foreach_mul_(dense, scale)
        for g in grads:
            if g.is_sparse:
                g.mul_(scale)
        return True

    def _update(self, base_step: Callable[[], Any]) -> Any:
        sampled = self.controller.is_sampled(self._step)
        if sampled:
            self.monitors.before_update()
        spec = self.action_spec
        saved = spec.swap_in(self._step)  # what ``with spec.effective():`` does, ~2 us a step cheaper
        try:
            out = base_step()
        finally:
            spec.swap_out(saved)
        if sampled:
            self.monitors.after_update()
        return out

    def _after_update(self, loss_v: float | None, gnorm_v: float, clipped: bool) -> None:
        self._step += 1
        if self._step == self._past_budget_at:
            self.advisor.past_budget(self._step, self.total_steps)
        self.monitors.on_step(StepRecord(self._step, loss_v, gnorm_v, clipped))
        g = self.guardrails
        if g is not None:
            g.start.updated()
            repay = g.good_step(self._step, loss_v)
            if repay != 1.0:
                g.repaid(repay, self.action_spec.scale_lr(repay))
            if g.snapshot_due(loss_v):
                g.snapshot(self._step, self._ctx.params, self.optimizer)
        if self.controller.is_due(self._step):
            if self.controller.loss_blind:
                self.advisor.no_loss(self._step)
            self.controller.decide(self._step)
            self.advisor.mostly_out_of_distribution(self.controller)
        self._arm_if_due()

    def _check_scaler(self) -> None:
        """Count GradScaler-skipped steps: the scaler shrinks its scale exactly when it skips.

        An overflow is routine in mixed precision (the scaler probes upwards), so it is counted,
        not treated as instability: no lr backoff, no skip-rate signal.
        """
        if self._grad_scaler is None or not self._grad_scaler.is_enabled():
            return
        scale = float(self._grad_scaler.get_scale())
        if self._last_scale is not None and scale < self._last_scale:
            if self.guardrails is not None:
                self.guardrails.amp_overflows += 1
            self.monitors.on_guardrail(Action.AMP_OVERFLOW.value)
        self._last_scale = scale

    def _intervene(self, verdict: Verdict, loss_v: float | None, gnorm_v: float) -> None:
        g = self.guardrails
        assert g is not None
        self._carry_out(g.respond(verdict, loss_v, gnorm_v, self._ctx.params))
        if g.nonfinite_in_a_row == NONFINITE_WARN_AFTER:
            self.advisor.nonfinite_streak(g, self.action_spec.lr_mult)

    def _carry_out(self, response: Response) -> None:
        """Do what a guardrail decided, in one place: restore a snapshot, move the lr multiplier
        (through ``ActionSpec``, within its bounds), tell the monitors and the decision log."""
        g = self.guardrails
        assert g is not None
        spec = self.action_spec
        if response.restore is not None:
            g.restore(response.restore, self._ctx.params, self.optimizer, self._buffers())
        before = spec.lr_mult
        if response.lr_factor != 1.0:
            g.charged(response, spec.scale_lr(response.lr_factor))
        if response.reset_loss_reference:
            # the loss moves to another level (a new data phase, or the best weights' level): not a spike
            self._loss_monitor.reset_spike_reference()
        self.monitors.on_guardrail(response.action.value)
        reason = response.reason
        if spec.lr_mult != before:
            reason += f"; lr multiplier {before:.3g} -> {spec.lr_mult:.3g}"
        self.controller.record("guardrail", [], reason, self._step)

    def _arm_if_due(self) -> None:
        # Activations are sampled on the forward pass that precedes a decision step.
        if self.controller.arms_after(self._step):
            self.monitors.arm()

    # -- decisions and statistics -----------------------------------------------
    def stats(self) -> dict[str, float]:
        """Every raw statistic the monitors (the controller's included) expose: the observation's source."""
        return self.monitors.stats()

    def observation(self) -> np.ndarray:
        """The policy's observation now (``ObservationSpec.encode`` of :meth:`stats`)."""
        return self.controller.observation()

    def apply_action(self, action: np.ndarray | list[float], *, source: str = "external", reason: str = "") -> Decision:
        """Apply one action from outside the policy (through the controller's one path) and record it."""
        return self.controller.apply(action, step=self._step, source=source, reason=reason)

    # -- user-facing ------------------------------------------------------
    def observe(self, val_loss: float | torch.Tensor | None = None, **metrics: float) -> None:
        """Report an evaluation: the validation loss (for overfitting) and any other metrics.

        Each value is one real number (a Python or numpy number, or a one-element tensor); a
        non-finite validation loss is recorded in ``metrics`` but neither watched nor judged.
        """
        values = {k: reported_number(k, v) for k, v in metrics.items()}  # every check before any effect
        if val_loss is not None:
            v = reported_number("val_loss", val_loss)
            if math.isfinite(v):
                self.monitors.on_validation(self._step, v)
                if self.guardrails is not None:
                    vote = self.guardrails.judge_validation(v, self._loss_monitor.initial_loss())
                    self._val_vote = max(self._val_vote, vote)
            values["val_loss"] = v
        self.metrics.update(values)

    def health(self) -> HealthReport:
        """Every indicator (value, status, reason, recommendation) plus architecture advice."""
        advice = recommend(self._profile, self.stats()) + self.controller.health_notes()
        if not self._ctx.params:
            advice = ["no parameter requires a gradient: chuck watches nothing (unfreeze a layer to train it)", *advice]
        return HealthReport(
            step=self._step,
            indicators=self.monitors.indicators(),
            recommendations=advice,
            hyperparameters=self.action_spec.hyperparameters(),
        )

    # -- end of run -------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ended the run (its history record is written)."""
        return self._closed

    def close(self) -> None:
        """End the run: write the history record and close the tracking logger. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.history_path = self._ledger.finish(self)
        if self.tracking is not None:
            try:
                self.tracking.close()
            except Exception as exc:  # noqa: BLE001 - closing must never raise into user code
                warnings.warn(f"chuck: closing the tracking logger failed: {exc}", RuntimeWarning, stacklevel=2)

    def __del__(self) -> None:
        # A run trained inside a function that returns only the model is garbage-collected
        # without close(): its record is written then.
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):  # never raise from a finalizer
                self.close()

    def __enter__(self) -> ChuckOptimizer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- checkpoints ------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        for pre_hook in list(self._optimizer_state_dict_pre_hooks.values()):
            pre_hook(self)
        sd = self.optimizer.state_dict()
        sd["chuck"] = chuck_state(self, CHECKPOINT_DECISIONS)
        for post_hook in list(self._optimizer_state_dict_post_hooks.values()):
            out = post_hook(self, sd)
            sd = out if out is not None else sd
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Validate the whole checkpoint first; load nothing unless all of it is valid.

        Every field of chuck's entry is checked (type, finiteness, sign, shapes against the live
        parameters) before anything is loaded. Should loading raise all the same, the base optimizer's
        state and chuck's are put back as they were before the call, and the load is refused: a
        failed load is never half-applied.

        Raises:
            CheckpointError: naming what is wrong (a non-finite multiplier, another model's shapes, ...).
        """
        for pre_hook in list(self._optimizer_load_state_dict_pre_hooks.values()):
            out = pre_hook(self, state_dict)
            state_dict = out if out is not None else state_dict
        load_checkpoint(self, state_dict)
        self.action_spec.publish()  # the loaded groups carry the key as it was when they were saved
        for post_hook in list(self._optimizer_load_state_dict_post_hooks.values()):
            post_hook(self)
