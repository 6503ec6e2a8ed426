"""Rollback of this process's active faults at interpreter exit and on SIGTERM.

``with`` blocks cover exceptions and KeyboardInterrupt; this module covers the exits that
skip them. A SIGKILL skips everything, which is what the journal and cleanup are for.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading

__all__ = ["register_active", "unregister_active", "active_faults", "revert_all"]

logger = logging.getLogger(__name__)

_lock = threading.RLock()
_active: dict[str, object] = {}
_installed = False
_previous_sigterm = None


def register_active(fault) -> None:
    """Track ``fault`` until it is reverted, installing the exit hooks on first use."""
    with _lock:
        _active[fault.id] = fault
        _install()


def unregister_active(fault) -> None:
    with _lock:
        _active.pop(fault.id, None)


def active_faults() -> list:
    with _lock:
        return list(_active.values())


def revert_all(reason: str) -> int:
    """Revert every active fault of this process; return how many were reverted."""
    count = 0
    # A halt is requested; an exit or a signal reverting faults is worth a warning.
    log = logger.info if reason == "halt" else logger.warning
    for fault in active_faults():
        log("reverting fault=%s target=%s at %s", fault.id, fault.target, reason)
        try:
            if fault.revert():
                count += 1
        except Exception:
            logger.exception("rollback of fault=%s failed at %s; run `incidentlab cleanup`", fault.id, reason)
    return count


def _install() -> None:
    global _installed, _previous_sigterm
    if _installed:
        return
    _installed = True
    atexit.register(revert_all, "interpreter exit")
    # Signal handlers can only be set from the main thread.
    if threading.current_thread() is threading.main_thread():
        _previous_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum, frame) -> None:
    revert_all("SIGTERM")
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    # Default action: exit with the conventional status for SIGTERM (128 + 15).
    raise SystemExit(143)
