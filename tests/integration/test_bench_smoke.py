"""The benchmark suite keeps working: a quick run writes a table with every figure.

Benchmarks are not timed tests: nothing here asserts performance, only that
`python -m bench --quick` runs every scenario against real processes and
reports a number for each figure.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import h2load, procs, scenarios, workload
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


@pytest.mark.timeout(120)
def test_open_loop_spreads_its_connections_into_one_request_every_period(
    tmp_path: Path,
) -> None:
    """At R req/s over C connections the sends are 1/R apart; in phase they come in bursts."""
    if shutil.which("h2load") is None:
        pytest.fail(INSTALL_HINT)
    port = procs.free_port()
    echo = procs.start_echo_server(port, tmp_path / "echo.log")
    body = tmp_path / "body.bin"
    body.write_bytes(workload.grpc_frame(b""))
    try:
        asyncio.run(scenarios.wait_ok(port, [1], echo, expect_keys=False, timeout_s=30))
        url = f"http://127.0.0.1:{port}/ofp.v1.FeatureService/GetFeatures"
        spread, together = (
            h2load.open_loop(url, body, rate=200.0, clients=4, duration_s=2.0, warmup_s=0.5,
                             log_path=tmp_path / name, phase=phase)
            for name, phase in (("a.tsv", "spread"), ("b.tsv", "together"))
        )
    finally:
        echo.stop()
    for run in (spread, together):
        assert run.non_200 == 0
        # Wide bounds: this checks the shape h2load was asked for, not the machine's speed.
        assert 100 <= run.achieved_rps <= 300, run
    # One send every 5 ms, against bursts of 4 sends at one instant every 20 ms.
    assert 2.5 <= spread.median_gap_ms <= 10.0, spread
    assert together.median_gap_ms < 1.0, together
    assert "--rate-period 5ms" in spread.command and "-D" not in spread.command.split()

