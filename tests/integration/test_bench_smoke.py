"""The benchmark suite keeps working: a quick run writes a table with every figure.

Benchmarks are not timed tests: nothing here asserts performance, only that
`python -m bench --quick` runs every scenario against real processes and
reports a number for each figure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.h2load import INSTALL_HINT
from bench.scenarios import ORDER

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
_NUMBER = re.compile(r"^-?[0-9][0-9,]*(\.[0-9]+)? ")


def _table_rows(markdown: str) -> list[list[str]]:
    rows = []
    for line in markdown.splitlines():
        if re.match(r"^\| \d+ \|", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


@pytest.mark.timeout(900)
def test_quick_suite_reports_every_figure_when_run_end_to_end(
    pg_server_dsn: str, tmp_path: Path
) -> None:
    if shutil.which("h2load") is None:
        pytest.fail(INSTALL_HINT)
    out = tmp_path / "benchmarks.md"
    env = {**os.environ, "OFP_BENCH_DATABASE_URL": pg_server_dsn}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out),
         "--work-dir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=840, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = _table_rows(out.read_text(encoding="utf-8"))
    assert len(rows) == len(ORDER), rows
    for row in rows:
        title, median = row[1], row[2]
        assert _NUMBER.match(median), f"figure {title!r} has no number: {median!r}"
