"""Stopping on Ctrl-C (SIGINT) or SIGTERM (SLURM preemption, ``kill``): both end a command the same way.

- :func:`terminate_as_interrupt`, installed once by the command line, makes SIGTERM raise :class:`Stopped`
  (a ``KeyboardInterrupt``) as Ctrl-C does, so every ``with`` block unwinds: the run lock is released,
  half-written cache entries are dropped.
- :class:`StopRequests`, held by the training loop, turns the first signal into a request that the loop
  reads between steps (it then writes a checkpoint if the last one is old, see ``train.save_on_signal_after``,
  and raises :class:`Stopped`); a second signal stops at once.

Handlers can only be set from the main thread; elsewhere (a thread running a run) signals keep their defaults.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A command ended by a signal: ``str()`` is the one line to print, :attr:`exit_code` 128 + the signal."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


def signal_name(signum: int) -> str:
    """``SIGTERM``, ``SIGINT`` (Ctrl-C)."""
    name = signal.Signals(signum).name
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(f"{signal_name(signum)} received", signum)


def terminate_as_interrupt() -> None:
    """SIGTERM raises :class:`Stopped` in the main thread, as Ctrl-C raises ``KeyboardInterrupt``."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_stopped)


class StopRequests:
    """``with StopRequests() as stop:`` -- the first SIGINT / SIGTERM sets :attr:`signum` (read it between
    steps); the second raises :class:`Stopped` at once. The previous handlers come back on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._before: dict[int, object] = {}

    def _request(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise Stopped(f"{signal_name(signum)} received twice: stopped at once, without a checkpoint", signum)
        self.signum = signum

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._before = {s: signal.signal(s, self._request) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._before.items():
            signal.signal(s, handler)
        self._before = {}
