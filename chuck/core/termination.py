"""SIGTERM ends a run the way interpreter exit does: its history record is written, its MLflow spool flushed.

Python's default action for SIGTERM (``docker stop``, SLURM preemption, ``kill``) ends the
process at once, without ``atexit`` handlers, so a run killed that way left no record while one
stopped with Ctrl-C (KeyboardInterrupt, then ``atexit``) left one. :func:`on_sigterm` registers
what must run first.

The contract, so that the signal is never swallowed:

* A handler is installed only from the main thread (the only one Python lets install one) and
  only while SIGTERM has its default action. A handler someone else installed (a framework's
  graceful shutdown, ``SIG_IGN``) is theirs: chuck leaves it alone, and a handler installed after
  chuck's replaces it, as they meant.
* On SIGTERM the registered callables run, newest first (as ``atexit`` does), each guarded:
  none may keep the process alive. Then the default action is restored and the signal sent
  again, so the process still ends "killed by SIGTERM" (exit status 128 + 15 in a shell, -15
  from ``subprocess``) and whoever sent it sees what it expects.
* A process forked from this one starts with no callables (``multiprocessing`` workers get
  SIGTERM from ``Pool.terminate()``: they must not write their parent's records).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

_lock = threading.RLock()
_callbacks: dict[int, Callable[[], None]] = {}
_ids = itertools.count()
_terminating = threading.Event()


def on_sigterm(callback: Callable[[], None]) -> Callable[[], None]:
    """Run ``callback`` when this process gets SIGTERM, before it ends; returns the function that unregisters it.

    Installs chuck's handler if SIGTERM still has its default action and this is the main thread;
    otherwise the callback stays registered and runs if a later call installs it.
    """
    with _lock:
        key = next(_ids)
        _callbacks[key] = callback
    _install()

    def unregister() -> None:
        with _lock:
            _callbacks.pop(key, None)

    return unregister


def terminating() -> bool:
    """Whether a SIGTERM is being handled: closing should be quick (the sender may follow with SIGKILL)."""
    return _terminating.is_set()


def _install() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):  # an embedded interpreter without signal support
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _handle)


def _handle(signum: int, frame: Any) -> None:
    _terminating.set()
    with _lock:
        callbacks = list(_callbacks.values())[::-1]
        _callbacks.clear()
    try:
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()
    finally:
        # the default action, as if chuck had never been here: the process ends killed by SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _forget_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # a lock held by another thread at fork time would never be released here
    _callbacks.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
