"""The product workloads as real processes, and RSS sampling with psutil."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FEATURES_PATH = REPO / "config" / "features_v0.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def product_env(dsn: str, bus_root: Path, *, features_path: Path = FEATURES_PATH,
                **settings: str | int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OFP_DATABASE_URL=dsn,
        OFP_FILE_BUS_ROOT=str(bus_root),
        OFP_FEATURES_PATH=str(features_path),
    )
    env.update({f"OFP_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Process:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            # Own session: a signal meant for the bench's process group never reaches it.
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self.popen.wait(timeout)
        finally:
            if self.popen.returncode is not None:
                self._log.close()

    def stop(self, grace_s: float = 10.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()

    def tail(self, n_bytes: int = 2000) -> str:
        with contextlib.suppress(OSError):
            data = self.log_path.read_bytes()
            return data[-n_bytes:].decode("utf-8", "replace")
        return ""


class Processes:
    """N processes serving one port (SO_REUSEPORT), handled like one `Process`."""

    def __init__(self, members: list[Process]) -> None:
        self.members = members

    @property
    def pid(self) -> int:
        return self.members[0].pid

    @property
    def pids(self) -> list[int]:
        return [m.pid for m in self.members]

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        dead = [m for m in self.members if not m.alive()]
        return (dead or self.members)[0].popen

    def alive(self) -> bool:
        return all(m.alive() for m in self.members)

    def stop(self, grace_s: float = 10.0) -> None:
        for m in self.members:
            m.stop(grace_s)

    def tail(self, n_bytes: int = 2000) -> str:
        return "\n".join(m.tail(n_bytes) for m in self.members)

    def log_marks(self) -> list[int]:
        """Where each member's log ends now (for `rpc_codes_since`)."""
        return [m.log_path.stat().st_size if m.log_path.exists() else 0 for m in self.members]

    def rpc_codes_since(self, marks: list[int]) -> Counter[str]:
        """grpc codes of the `rpc_finished` lines logged after `marks` (ofp-server logs one
        per call; h2load sees only HTTP statuses, and a gRPC error is an HTTP 200)."""
        codes: Counter[str] = Counter()
        for m, start in zip(self.members, marks, strict=True):
            with contextlib.suppress(OSError), m.log_path.open("rb") as f:
                f.seek(start)
                for line in f:
                    if b'"rpc_finished"' not in line:
                        continue
                    with contextlib.suppress(ValueError):
                        codes[str(json.loads(line).get("grpc_code"))] += 1
        return codes


def start_server(dsn: str, bus_root: Path, port: int, log_path: Path, *,
                 processes: int = 1, features_path: Path = FEATURES_PATH,
                 **settings: str | int) -> Processes:
    """`processes` ofp-server processes on one port (OFP_GRPC_REUSEPORT when more than one);
    `settings` become OFP_ environment variables (snapshot_log="off", ...)."""
    reuse = "true" if processes > 1 else "false"
    env = product_env(dsn, bus_root, features_path=features_path,
                      grpc_address=f"127.0.0.1:{port}", grpc_reuseport=reuse, **settings)
    return Processes([
        Process([str(BIN / "ofp-server")], env, log_path.with_suffix(f".{i}{log_path.suffix}"))
        for i in range(processes)
    ])


def run_migrate(dsn: str, bus_root: Path, log_path: Path) -> None:
    """`ofp migrate` before workloads that start together: the server refuses a
    database whose schema is not its build's (the projector migrates only
    when it starts first, as the migration Job does in a deployment)."""
    proc = Process([str(BIN / "ofp"), "migrate"], product_env(dsn, bus_root), log_path)
    rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"ofp migrate exited {rc}:\n{proc.tail()}")


def start_server_workers(dsn: str, bus_root: Path, port: int, log_path: Path, *, workers: int,
                         features_path: Path = FEATURES_PATH) -> Processes:
    """`ofp-server --workers N`: the supervisor and its N workers (one log, the supervisor's)."""
    env = product_env(dsn, bus_root, features_path=features_path,
                      grpc_address=f"127.0.0.1:{port}")
    return Processes([Process([str(BIN / "ofp-server"), "--workers", str(workers)], env,
                              log_path)])


def tree_pids(pids: list[int]) -> list[int]:
    """`pids` and every process they started (a supervisor's workers)."""
    out: list[int] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            out += [pid, *(c.pid for c in proc.children(recursive=True))]
    return out


def start_projector(
    dsn: str, bus_root: Path, log_path: Path, *, once: bool,
    features_path: Path = FEATURES_PATH, **settings: str | int
) -> Process:
    argv = [str(BIN / "ofp-projector"), *(["--once"] if once else [])]
    return Process(argv, product_env(dsn, bus_root, features_path=features_path, **settings),
                   log_path)


def run_projector_once(dsn: str, bus_root: Path, log_path: Path, *,
                       features_path: Path = FEATURES_PATH, **settings: str | int) -> float:
    """Drain the bus with `ofp-projector --once`; the wall time in seconds."""
    t0 = time.perf_counter()
    proc = start_projector(dsn, bus_root, log_path, once=True, features_path=features_path,
                           **settings)
    rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"ofp-projector --once exited {rc}:\n{proc.tail()}")
    return time.perf_counter() - t0


def start_echo_server(port: int, log_path: Path, *, processes: int = 1,
                      select_1_dsn: str | None = None) -> Processes:
    argv = [sys.executable, "-m", "bench.echo_server", "--port", str(port),
            *(["--reuseport"] if processes > 1 else []),
            *(["--select-1", select_1_dsn] if select_1_dsn else [])]
    return Processes([
        Process(argv, dict(os.environ), log_path.with_suffix(f".{i}{log_path.suffix}"))
        for i in range(processes)
    ])


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (children excluded)."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


@dataclass
class RssSampler:
    """Samples one process's RSS (bytes) every `interval_s` on a background thread."""

    pid: int
    interval_s: float = 0.1
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        proc = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), int(proc.memory_info().rss)))
            except psutil.Error:
                return
            self._stop.wait(self.interval_s)

    @property
    def peak(self) -> int:
        return max((r for _, r in self.samples), default=0)


class RssSamplers:
    """One `RssSampler` per process; `peak` is the largest process's peak."""

    def __init__(self, pids: list[int], interval_s: float = 0.1) -> None:
        self.samplers = [RssSampler(pid, interval_s) for pid in pids]

    def __enter__(self) -> RssSamplers:
        for sampler in self.samplers:
            sampler.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for sampler in self.samplers:
            sampler.__exit__(*exc)

    @property
    def peak(self) -> int:
        return max((s.peak for s in self.samplers), default=0)
