"""The end of a run: its history record is written exactly once, however the run ends.

A run ends with ``close()``, a ``with`` block, garbage collection of the optimizer
(training inside a function that returns only the model), interpreter exit or SIGTERM
(:mod:`chuck.core.termination`). Each path calls :meth:`RunLedger.finish`; only the
first writes. A core-only install (no polars) says once per process that history is
off, instead of warning at every exit. An unusable history location is one warning at
the start and a run without a record: nothing in the constructor may stop training.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chuck.core.termination import on_sigterm


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
    _atexit: Any = None
    _unregister_sigterm: Any = None

    @classmethod
    def start(cls, opt: Any, target: bool | str, info: dict[str, Any]) -> RunLedger:
        initial = {k: v for k, v in opt.hyperparameters.items() if not k.startswith("knob.")}
        if target:
            target = usable_history_directory(target)
        ledger = cls(target, info, initial)
        opt._initial_hyperparameters = initial  # read by chuck.history.record_from_optimizer
        if target:
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
            from chuck.core.home import chuck_home

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
