"""The long commands' progress: a tqdm bar (rate, ETA) on a terminal, JSON lines otherwise."""

from __future__ import annotations

import io
import json

from ofp_cli.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_rate_and_eta() -> None:
    out = _Terminal()
    bar = Progress("replay", total=200, stream=out)
    for n in (50, 100, 200):
        bar.set(n)
    bar.close()
    text = out.getvalue()
    assert "replay" in text and "200/200" in text
    assert "rec/s" in text and "<" in text  # tqdm's "elapsed<remaining, rate"
    assert "{" not in text


def test_off_a_terminal_json_lines_with_rate_and_eta_end_with_a_final_one() -> None:
    out = io.StringIO()
    progress = Progress("quarantine replay", total=10, stream=out, interval_s=0.0)
    for _ in range(10):
        progress.add()
    progress.close()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 11
    assert lines[0]["done"] == 1 and lines[0]["total"] == 10 and not lines[0]["finished"]
    assert lines[0]["eta_s"] is not None and lines[0]["rate_per_s"] >= 0
    assert lines[-1] == {**lines[-1], "task": "quarantine replay", "done": 10,
                         "finished": True, "eta_s": 0.0}


def test_an_unknown_total_has_no_eta() -> None:
    out = io.StringIO()
    progress = Progress("replay", stream=out, interval_s=0.0)
    progress.set(5)
    progress.close()
    assert all(json.loads(x)["eta_s"] is None for x in out.getvalue().splitlines())
