"""Progress on stderr: one redrawn line on a terminal; elsewhere (journald, CI logs) a line
per new stage, and within a stage at most one every ``interval`` seconds."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    def __init__(self, stream: TextIO | None = None, interval: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self._last: tuple[str, float] = ("", 0.0)

    def show(self, text: str, *, stage: str | None = None, force: bool = False) -> None:
        """``text`` now on a terminal; elsewhere when its ``stage`` differs from the last
        line's, when ``force``, or ``interval`` after the last line."""
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
            return
        stage = text if stage is None else stage
        last_stage, last_at = self._last
        now = time.monotonic()
        if force or stage != last_stage or now - last_at >= self.interval:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last = (stage, now)

    def done(self, text: str) -> None:
        """The final line of one task, always written and kept."""
        self.stream.write(("\r\x1b[2K" if self.tty else "") + text + "\n")
        self.stream.flush()
        self._last = ("", 0.0)
