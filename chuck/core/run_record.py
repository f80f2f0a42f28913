"""The end of a run: its history record is written exactly once, however the run ends.

A run ends with ``close()``, a ``with`` block, garbage collection of the optimizer
(training inside a function that returns only the model), interpreter exit or SIGTERM
(:mod:`chuck.core.termination`). Each path calls :meth:`RunLedger.finish`; only the
first writes. A core-only install (no polars) says once per process that history is
off, instead of warning at every exit. An unusable history location is one warning at
the start and a run without a record: nothing in the constructor may stop training.

While the run goes on, :class:`LrTrail` (a step post hook) notes the lr the run started from and the
lr of every base step, for the record's ``lr_start`` and ``lr_median``: what warm starts repeat, and
what the run trained with most (:mod:`chuck.history.warm_start`).
"""

from __future__ import annotations

import atexit
import math
import os
import tempfile
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chuck.core.home import chuck_home
from chuck.core.termination import on_sigterm

#: Bins of the lr histogram per decade: 200 makes a bin 1.2% wide, finer than any lr difference a
#: training run resolves (moving the lr by 0.1% already changes outcomes by up to 5%:
#: ``experiments/benchmark_resolution.py``), and bounds the memory by the lr's range, not the run's length.
LR_BINS_PER_DECADE = 200
#: An lr held as a tensor on an accelerator is read every this many steps only (each read waits for the device).
DEVICE_LR_EVERY = 100


class LrTrail:
    """The lr a run started from and the lr it used most; a step post hook on the ChuckOptimizer.

    * :attr:`start`: param group 0's ``lr`` at the first ``step()`` call, as the user (or their
      scheduler) set it: chuck's multiplier, warm-up and anneal not applied. What the user chose,
      and what a warm start repeats.
    * :meth:`median`: the median, over the base steps taken (guardrail-skipped steps excluded), of
      the effective lr each step ran with (group 0's ``lr`` times chuck's multiplier for that step,
      warm-up and anneal included). The median, not a mean: a warm-up or a cooldown that spans a
      minority of the steps does not move it (a 100x anneal over the last 10% of a run would pull
      the geometric mean down 0.2 decades). Steps at lr 0 (a scheduler's warm-up from zero) trained
      nothing and are left out.

    Memory is bounded by the lr's range: steps are counted in log-spaced bins
    (:data:`LR_BINS_PER_DECADE`), each holding its count and the sum of its lrs' logs, so the median
    of a run whose lr held still is that lr exactly.
    """

    def __init__(self) -> None:
        self.start: float | None = None
        self._counted = 0  # base steps already counted
        self._value: float | None = None  # the lr of the current run of equal steps, and its length
        self._run = 0
        self._bins: dict[int, list[float]] = {}

    def __call__(self, opt: Any, args: Any = (), kwargs: Any = None) -> None:
        groups = opt.optimizer.param_groups
        lr = groups[0].get("lr") if groups else None
        if lr is None:
            return
        device = isinstance(lr, torch.Tensor) and lr.device.type != "cpu"
        if self.start is None:
            self.start = float(lr)
        steps = opt.step_count
        if steps == self._counted:  # skipped by a guardrail, or taken by a rollback: no base step ran
            return
        weight = steps - self._counted
        if device and steps % DEVICE_LR_EVERY and weight < DEVICE_LR_EVERY:
            return  # counted with the next read, which carries the steps since the last
        self._counted = steps
        value = float(lr) * opt.action_spec.step_lr_mult
        if value == self._value:
            self._run += weight
            return
        self._flush()
        self._value, self._run = value, weight

    def _flush(self) -> None:
        v = self._value
        if v is None or not (v > 0 and math.isfinite(v)) or not self._run:
            return
        log = math.log10(v)
        b = self._bins.setdefault(round(log * LR_BINS_PER_DECADE), [0.0, 0.0])
        b[0] += self._run
        b[1] += self._run * log

    def median(self) -> float | None:
        """The median effective lr over the steps counted so far (``None`` before the first)."""
        self._flush()
        self._run = 0
        if not self._bins:
            return None
        total = sum(b[0] for b in self._bins.values())
        seen = 0.0
        for key in sorted(self._bins):
            count, log_sum = self._bins[key]
            seen += count
            if seen >= total / 2:
                return 10.0 ** (log_sum / count)
        return None  # pragma: no cover - the loop always reaches half the total

    def summary(self) -> dict[str, float]:
        """``{"start": ..., "median": ...}`` (a key is missing when no step gave it)."""
        out: dict[str, float] = {}
        if self.start is not None:
            out["start"] = self.start
        median = self.median()
        if median is not None:
            out["median"] = median
        return out


@dataclass
class RunLedger:
    """What a run's history record needs from its start, and whether it was written.

    Attributes:
        target: ``True`` (``$CHUCK_HOME/history``), a directory, or ``False`` (no record).
        info: label, batch size, data size for the record's fingerprint.
        initial: the hyperparameters the run started with.
    """

    target: bool | str
    info: dict[str, Any]
    initial: dict[str, float] = field(default_factory=dict)
    written: bool = False
    lr_trail: LrTrail | None = None
    _atexit: Any = None
    _unregister_sigterm: Any = None
    _trail_handle: Any = None

    @classmethod
    def start(cls, opt: Any, target: bool | str, info: dict[str, Any]) -> RunLedger:
        initial = {k: v for k, v in opt.hyperparameters.items() if not k.startswith("knob.")}
        if target:
            target = usable_history_directory(target)
        ledger = cls(target, info, initial)
        opt._initial_hyperparameters = initial  # read by chuck.history.record_from_optimizer
        if target:
            ledger.lr_trail = LrTrail()
            opt._lr_trail = ledger.lr_trail  # read by chuck.history.record_from_optimizer
            ledger._trail_handle = opt.register_step_post_hook(ledger.lr_trail)
            ref = weakref.ref(opt)

            def at_exit() -> None:
                o = ref()
                if o is not None:
                    o.close()

            ledger._atexit = at_exit
            atexit.register(at_exit)
            ledger._unregister_sigterm = on_sigterm(at_exit)  # SIGTERM skips atexit: it would lose the record
        return ledger

    def finish(self, opt: Any) -> str | None:
        """Write the record (once, and only for a run that took steps); return its path."""
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None
        if self._unregister_sigterm is not None:
            self._unregister_sigterm()
            self._unregister_sigterm = None
        if self._trail_handle is not None:
            self._trail_handle.remove()
            self._trail_handle = None
        if self.written or not self.target or opt.step_count == 0:
            return None
        self.written = True
        return write_history_record(opt, self.target, self.info)


def usable_history_directory(target: bool | str) -> str | bool:
    """The directory a run's record will go to, created now; ``False`` (and one RuntimeWarning) when unusable.

    Resolved at the start: a run collected later must not write into whatever ``CHUCK_HOME`` is
    then. An unusable location (``HOME`` unwritable or missing, ``CHUCK_HOME`` a regular file, a
    read-only directory) never stops training: the run goes on without a record.
    """
    try:
        if target is True:
            directory = chuck_home() / "history"
        else:
            directory = Path(str(target)).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")  # catches read-only mounts, even for root
        os.close(fd)
        os.unlink(probe)
    except (OSError, RuntimeError) as exc:
        warnings.warn(
            f"chuck: this run will leave no history record: {exc} (set CHUCK_HOME to a writable directory, "
            "or pass history=False)",
            RuntimeWarning,
            stacklevel=4,
        )
        return False
    return str(directory)


#: Per thread: whether a record is being written, and the runs that ended meanwhile.
_writer = threading.local()


def write_history_record(opt: Any, target: bool | str, info: dict[str, Any]) -> str | None:
    """Write ``opt``'s record; never raises into the user's run.

    The garbage collector runs finalizers wherever it happens to run, including inside this function
    while it imports ``chuck.history`` or polars for the first time. A run that ends there (its
    optimizer collected) would see half-imported modules and lose its record, so it waits: the write
    in progress writes it when its own is done (``opt.history_path`` is set then).
    """
    if getattr(_writer, "busy", False):
        _writer.waiting.append((opt, target, info))
        return None
    _writer.busy, _writer.waiting = True, []
    try:
        path = _write(opt, target, info)
        while _writer.waiting:
            other, other_target, other_info = _writer.waiting.pop(0)
            other.history_path = _write(other, other_target, other_info)
        return path
    finally:
        _writer.busy = False


def _write(opt: Any, target: bool | str, info: dict[str, Any]) -> str | None:
    try:
        from chuck.history import record_from_optimizer, report_polars_missing_once, write_record
    except ImportError as exc:  # pragma: no cover - chuck.history itself imports lazily
        warnings.warn(f"chuck: run history unavailable: {exc}", RuntimeWarning, stacklevel=4)
        return None
    try:
        record = record_from_optimizer(opt, **info)
        directory = target if isinstance(target, str) else None
        return str(write_record(record, directory))
    except ModuleNotFoundError:  # polars is not installed: say so once per process, not at every exit
        report_polars_missing_once()
    except Exception as exc:  # noqa: BLE001 - a history failure must never break the user's run
        warnings.warn(f"chuck: could not write the run history record: {exc}", RuntimeWarning, stacklevel=4)
    return None
