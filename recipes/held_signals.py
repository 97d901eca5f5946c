"""Ctrl-C and SIGTERM held back while a child process group starts, until the code that stops it is in place.

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

_HELD = (signal.SIGINT, signal.SIGTERM)


class HeldSignals:
    """Records Ctrl-C and SIGTERM instead of acting on them, until :meth:`release`."""

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
    """Hold Ctrl-C and SIGTERM for the block, or until ``release()`` is called inside it."""
    held = HeldSignals()
    try:
        yield held
    finally:
        held.release()
