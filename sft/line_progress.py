"""Progress bars for logs: when output goes to a file or a pipe, a bar becomes one line per interval.

tqdm (the bars of datasets, huggingface_hub, transformers' Trainer and tempa's own sampling)
redraws a bar in place with carriage returns. In a terminal that is what people want; in a log
file it leaves thousands of ``\\r`` states on one line. :func:`line_mode` wraps ``sys.stderr``
when it is not a terminal: every write passes through unchanged except bar redraws, of which one
line per ``interval_s`` (and each bar's last state) is written. No call site changes.
"""

from __future__ import annotations

import io
import re
import sys
import time
from typing import TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm's cursor moves for nested bars


class LineProgressStream(io.TextIOBase):
    """A text stream that turns carriage-return redraws into at most one line per ``interval_s``."""

    def __init__(self, raw: TextIO, interval_s: float = 30.0):
        self.raw = raw
        self.interval_s = interval_s
        self._line = ""  # text since the last \r or \n
        self._redrawn = False  # the current line began with a \r (a bar state)
        self._last_emit = float("-inf")

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.raw, "encoding", "utf-8")

    def fileno(self) -> int:
        return self.raw.fileno()

    def write(self, text: str) -> int:
        # (tqdm's cursor moves for a nested bar are ANSI escapes alone: the same writer, nothing to break the line for)
        if self._redrawn and self._line.strip() and not text.startswith(("\r", "\n")) and _ANSI.sub("", text):
            # Another writer (a log line) while a bar's state is pending: the state gets a line of its own rather
            # than the log line's start (a bar redraws with "\r" and ends with "\n").
            self.raw.write(self._line.rstrip() + "\n")
            self._line, self._redrawn = "", False
        for piece in re.split(r"(\r\n|\r|\n)", _ANSI.sub("", text)):
            if piece in ("\n", "\r\n"):
                if self._line.strip() or not self._redrawn:
                    self.raw.write(self._line + "\n")  # a plain line, or a bar's final state
                self._line, self._redrawn = "", False
            elif piece == "\r":
                now = time.monotonic()
                if self._redrawn and self._line.strip() and now - self._last_emit >= self.interval_s:
                    self.raw.write(self._line.rstrip() + "\n")
                    self._last_emit = now
                self._line, self._redrawn = "", True
            else:
                self._line += piece
        self.raw.flush()
        return len(text)

    def flush(self) -> None:
        self.raw.flush()


def line_mode(interval_s: float = 30.0) -> None:
    """Wrap ``sys.stderr`` (and a shared ``sys.stdout``'s bars) when it is not a terminal."""
    if not sys.stderr.isatty() and not isinstance(sys.stderr, LineProgressStream):
        sys.stderr = LineProgressStream(sys.stderr, interval_s)
