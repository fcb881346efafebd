"""The progress line on stderr: phase, time since the run began, calls so far.

On a terminal one line is rewritten in place; otherwise (a log, a test) a line
is written when a phase starts and ends, and every few seconds in between.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

LOG_EVERY_S = 5.0


class Progress:
    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._began = time.monotonic()
        self._phase = ""
        self._last_log = 0.0
        self._shown = ""

    def _clock(self) -> str:
        seconds = int(time.monotonic() - self._began)
        return f"[{seconds // 60:d}:{seconds % 60:02d}]"

    def phase(self, name: str) -> None:
        self._end_line()
        self._phase = name
        self._last_log = 0.0
        self.update("")

    def update(self, detail: str) -> None:
        text = f"{self._clock()} {self._phase}" + (f": {detail}" if detail else "")
        if self._tty:
            self._stream.write("\r\x1b[K" + text)
            self._shown = text
        elif time.monotonic() - self._last_log >= LOG_EVERY_S:
            self._stream.write(text + "\n")
            self._last_log = time.monotonic()
        self._stream.flush()

    def measuring(self, since_start: float, duration: float, calls: int) -> None:
        """A load measurement's line: warming up, or seconds of `duration` and calls."""
        if since_start < 0:
            self.update(f"warming up, {calls:,} calls")
        elif duration == float("inf"):
            self.update(f"{since_start:.1f} s, {calls:,} calls")
        else:
            self.update(f"{min(since_start, duration):.1f}/{duration:g} s, {calls:,} calls")

    def done(self, summary: str) -> None:
        text = f"{self._clock()} {self._phase}: {summary}"
        self._stream.write(("\r\x1b[K" if self._tty else "") + text + "\n")
        self._stream.flush()
        self._shown = ""

    def _end_line(self) -> None:
        if self._tty and self._shown:
            self._stream.write("\n")
            self._shown = ""

    def say(self, text: str) -> None:
        self._end_line()
        self._stream.write(f"{self._clock()} {text}\n")
        self._stream.flush()
