"""Progress of the long commands (replay, verify --replay, quarantine replay).

On a terminal (stderr) a tqdm bar with the rate and, when the total is known,
the ETA. Otherwise one JSON line on stderr every few seconds and one at the
end, for logs and scripts:

    {"event": "progress", "task": "replay", "done": 1200, "total": 5000,
     "rate_per_s": 850.2, "eta_s": 4.5, "elapsed_s": 1.4, "finished": false}

stdout keeps only the command's answer either way.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

LINE_INTERVAL_S = 2.0


class Progress:
    def __init__(self, task: str, *, total: int | None = None, unit: str = "rec",
                 stream: TextIO | None = None, interval_s: float = LINE_INTERVAL_S) -> None:
        self.task = task
        self.total = total
        self.done = 0
        self._out = stream if stream is not None else sys.stderr
        self._t0 = time.monotonic()
        self._interval_s = interval_s
        self._next_line = 0.0
        self._bar: tqdm[Any] | None = None
        if self._out.isatty():
            self._bar = tqdm(total=total, unit=unit, desc=task, file=self._out,
                             dynamic_ncols=True)

    def set(self, done: int, total: int | None = None) -> None:
        """The absolute count so far (and the total, when it becomes known)."""
        if total is not None:
            self.total = total
        self.done = done
        if self._bar is not None:
            if total is not None and self._bar.total != total:
                self._bar.total = total
            self._bar.n = done
            self._bar.refresh()
            return
        now = time.monotonic()
        if now >= self._next_line:
            self._next_line = now + self._interval_s
            self._line(finished=False)

    def add(self, n: int = 1) -> None:
        self.set(self.done + n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self._line(finished=True)

    def _line(self, *, finished: bool) -> None:
        elapsed = time.monotonic() - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = None
        if self.total is not None and rate > 0:
            eta = round(max(0, self.total - self.done) / rate, 1)
        doc = {"event": "progress", "task": self.task, "done": self.done, "total": self.total,
               "rate_per_s": round(rate, 1), "eta_s": eta, "elapsed_s": round(elapsed, 1),
               "finished": finished}
        print(json.dumps(doc), file=self._out, flush=True)
