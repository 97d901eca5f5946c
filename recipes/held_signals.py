"""Ctrl-C, SIGTERM and SIGHUP held back while a child process group starts, until the code that stops it is in place;
and SIGHUP turned into a stop the runner cleans up after (:func:`hangup_stops`).

A signal that lands between ``Popen`` forking the child and the ``try`` that stops its group raises
where nothing cleans up: the runner says "interrupted" and exits while the training group goes on
(seen in CI, SIGTERM a few milliseconds after ``launch.pid`` was written). A held signal is delivered to
the handler that was in place: tempa's CLI turns SIGTERM into an exception, so the group is stopped; where
SIGTERM still has its default action (the launcher used as a library), the process ends there, as it would
have without the hold, and the training group is left to the watchdog and the worker's own watch. Usage::

    with held_signals() as held:
        proc = subprocess.Popen(..., start_new_session=True)
        try:
            ...  # whatever the stop needs (pid file, watchdog)
            held.release()  # a signal that came meanwhile is raised here, inside the try
            ...
        except BaseException:
            stop(proc)
            raise
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class HungUp(KeyboardInterrupt):
    """SIGHUP: the terminal the run was started from closed (an ssh connection dropped, outside tmux or screen)."""

    def __str__(self) -> str:
        return "SIGHUP: the terminal it was started from closed; run tempa in tmux or screen, or under nohup, to outlive it"


@contextmanager
def hangup_stops() -> Iterator[None]:
    """For the block, SIGHUP raises :class:`HungUp`, which stops the run as Ctrl-C does: the training group gets
    SIGTERM and its grace, the stage log says why it stopped, the lock is let go. SIGHUP's default action ended the
    runner at once, its group SIGKILLed by the watchdog (or, in the moment it starts, left running) and no line saying
    why anywhere the user could read after reconnecting. A SIGHUP that is ignored (nohup) or handled already is left
    so; so is one outside the main thread, where no handler can be installed."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGHUP) != signal.SIG_DFL:
        yield
        return

    def _hangup(signum: int, frame: object) -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the kernel may send it again: it must not cut the cleanup short
        raise HungUp()

    previous = signal.signal(signal.SIGHUP, _hangup)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


class HeldSignals:
    """Records Ctrl-C, SIGTERM and SIGHUP instead of acting on them, until :meth:`release`."""

    def __init__(self) -> None:
        self._caught: list[int] = []
        self._previous: dict[int, object] = {}
        # Python runs handlers in the main thread only, and only it may install them; elsewhere
        # a signal cannot interrupt this thread, so there is nothing to hold.
        if threading.current_thread() is threading.main_thread():
            for sig in _HELD:
                previous = signal.getsignal(sig)
                if previous is not None:  # None: installed outside Python, so it could not be put back
                    self._previous[sig] = signal.signal(sig, self._catch)

    def _catch(self, signum: int, frame: object) -> None:
        self._caught.append(signum)

    def release(self) -> None:
        """Put the handlers back and deliver what came while they were held (once); idempotent."""
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        caught, self._caught = self._caught, []
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


@contextmanager
def held_signals() -> Iterator[HeldSignals]:
    """Hold Ctrl-C, SIGTERM and SIGHUP for the block, or until ``release()`` is called inside it."""
    held = HeldSignals()
    try:
        yield held
    finally:
        held.release()
