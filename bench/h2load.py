"""The external load generator: `h2load` (Debian package nghttp2-client).

Closed loop (`-n -c -m`) measures saturation; open loop (`--rps` per client)
measures latency, computed here from `--log-file` (start time µs, HTTP
status, duration µs) after discarding the warm-up.

An open loop at R requests/s over C connections sends one request every 1/R s:
the connections are opened 1/R s apart (`-r 1 --rate-period`), so their
`--rps` timers are out of phase. Opened together (h2load's default) every
connection's timer fires at the same instant, and "1,000 requests/s" becomes a
burst of C requests every C/R s; `phase="together"` measures that shape too.

h2load only sees HTTP statuses, never grpc-status: callers check the request
once with a real gRPC client before every load run.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = (
    "h2load not found on PATH: install it with `make h2load` "
    "(apt-get install -y nghttp2-client)"
)
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


class H2loadMissingError(RuntimeError):
    """h2load is not installed; the suite cannot measure gRPC serving."""


class H2loadFailedError(RuntimeError):
    """h2load ran but requests failed or its output could not be read."""


def h2load_path() -> str:
    found = shutil.which("h2load")
    if found is None:
        raise H2loadMissingError(INSTALL_HINT)
    return found


def version() -> str:
    out = subprocess.run([h2load_path(), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclass(frozen=True)
class ClosedLoop:
    requests: int
    succeeded: int
    req_per_s: float
    command: str


@dataclass(frozen=True)
class OpenLoop:
    sent: int  # every request of the run, the warm-up's included
    requests: int  # after the warm-up
    non_200: int
    achieved_rps: float
    p50_ms: float
    p99_ms: float
    # Median gap between consecutive request starts: ~1/rate when the
    # connections interleave, ~0 when they fire in bursts.
    median_gap_ms: float
    command: str


def _base(url: str, body: Path, clients: int, streams: int) -> list[str]:
    argv = [h2load_path(), "-c", str(clients), "-m", str(streams), "-d", str(body)]
    for h in GRPC_HEADERS:
        argv += ["-H", h]
    return [*argv, url]


def _run(argv: list[str], timeout_s: float) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise H2loadFailedError(f"{' '.join(argv)} exited {out.returncode}:\n{out.stdout}"
                                f"\n{out.stderr}")
    return out.stdout


_REQS = re.compile(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed,"
                   r" (\d+) errored")
_RATE = re.compile(r"finished in [0-9.]+\w*, ([0-9.]+) req/s")


def closed_loop(url: str, body: Path, *, requests: int, clients: int, streams: int,
                timeout_s: float = 600) -> ClosedLoop:
    argv = _base(url, body, clients, streams)
    argv[1:1] = ["-n", str(requests)]
    text = _run(argv, timeout_s)
    reqs, rate = _REQS.search(text), _RATE.search(text)
    if reqs is None or rate is None:
        raise H2loadFailedError(f"unreadable h2load output:\n{text}")
    total, ok, failed, errored = (int(g) for g in reqs.groups())
    if failed or errored or ok != total:
        raise H2loadFailedError(f"{failed} failed / {errored} errored requests:\n{text}")
    return ClosedLoop(total, ok, float(rate.group(1)), _shown(argv))


def open_loop(url: str, body: Path, *, rate: float, clients: int, duration_s: float,
              warmup_s: float, log_path: Path, streams: int = 64,
              phase: str = "spread") -> OpenLoop:
    """`rate` requests/s in total over `clients` connections for `duration_s`.

    `phase="spread"`: the connections' send times interleave, one request
    every 1/rate s; `"together"`: they send at the same instants, in bursts of
    `clients` requests (see the module docstring).
    """
    argv = _base(url, body, clients, streams)
    per_client = rate / clients
    log_path.unlink(missing_ok=True)
    if phase == "spread":
        # -r and -D exclude each other: the run is sized by its request count
        # (h2load gives each connection an equal share).
        per_conn = max(1, round(per_client * duration_s))
        stagger_ms = max(1, round(1000 / rate))
        argv[1:1] = ["--rps", f"{per_client:g}", "-n", str(per_conn * clients), "-r", "1",
                     "--rate-period", f"{stagger_ms}ms", "--log-file", str(log_path)]
    elif phase == "together":
        argv[1:1] = ["--rps", f"{per_client:g}", "-D", str(max(1, round(duration_s))),
                     "--log-file", str(log_path)]
    else:
        raise ValueError(f"phase must be 'spread' or 'together', not {phase!r}")
    _run(argv, duration_s * 4 + 60)
    rows: list[tuple[int, int, int]] = []
    for line in log_path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    if not rows:
        raise H2loadFailedError(f"h2load wrote no requests to {log_path}")
    t0 = min(r[0] for r in rows)
    kept = [r for r in rows if r[0] >= t0 + warmup_s * 1e6]
    if not kept:
        raise H2loadFailedError("no requests after the warm-up: lengthen the run")
    span_s = max(1e-9, (max(r[0] for r in kept) - min(r[0] for r in kept)) / 1e6)
    durations = sorted(r[2] / 1000.0 for r in kept)
    starts = sorted(r[0] for r in kept)
    gaps = sorted((b - a) / 1000.0 for a, b in itertools.pairwise(starts)) or [0.0]
    return OpenLoop(
        sent=len(rows),
        requests=len(kept),
        non_200=sum(1 for r in kept if r[1] != 200),
        achieved_rps=len(kept) / span_s if len(kept) > 1 else 0.0,
        p50_ms=percentile(durations, 50),
        p99_ms=percentile(durations, 99),
        median_gap_ms=percentile(gaps, 50),
        command=_shown(argv),
    )


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]


def _shown(argv: list[str]) -> str:
    """The command as the report shows it: `h2load` by name, temporary paths shortened."""
    shown = ["h2load"]
    for a in argv[1:]:
        if a.startswith("/"):
            # Temporary files carry a random suffix: show the stable part of the name.
            shown.append(re.sub(r"-[0-9a-f]{6}(\.\w+)$", r"\1", Path(a).name))
        else:
            shown.append(f"'{a}'" if " " in a else a)
    return " ".join(shown)
