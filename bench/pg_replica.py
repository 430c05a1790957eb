"""A PostgreSQL primary and a streaming replica of it, made for a test or a bench run.

A shared server rarely has a replication entry in pg_hba, so the pair is a
cluster of its own: `initdb` a primary (wal_level=replica, a replication
entry for 127.0.0.1), `pg_basebackup -R` a replica of it, both on free ports
under one temporary directory. The binaries are PostgreSQL 15's (OFP_PG_BIN
overrides the directory); they refuse to run as root, so a root process
runs them as the OS user `postgres`. Missing binaries raise
PostgresBinariesMissingError: a replica test or figure that cannot make its
replica has not passed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN = Path(os.environ.get("OFP_PG_BIN", "/usr/lib/postgresql/15/bin"))
DATABASE = "ofp"
_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
wal_level = replica
max_wal_senders = 4
wal_keep_size = '128MB'
hot_standby = on
hot_standby_feedback = on
max_connections = 60
shared_buffers = '32MB'
# Durability is not what a replica test or figure measures; commits still
# wait for their WAL write (synchronous_commit on), as in production.
fsync = off
full_page_writes = off
log_min_messages = warning
"""


class PostgresBinariesMissingError(RuntimeError):
    """initdb / pg_ctl / pg_basebackup are not where PG_BIN says."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ReplicaPair:
    root: Path
    primary_port: int
    replica_port: int
    _as_root: bool = field(default=False, repr=False)

    @property
    def primary_dir(self) -> Path:
        return self.root / "primary"

    @property
    def replica_dir(self) -> Path:
        return self.root / "replica"

    def dsn(self, port: int, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{database}"

    @property
    def primary_dsn(self) -> str:
        return self.dsn(self.primary_port)

    @property
    def replica_dsn(self) -> str:
        return self.dsn(self.replica_port)

    def run(self, *args: str | Path) -> str:
        """A PostgreSQL binary, as the OS user `postgres` when the tests run as root."""
        cmd = [str(PG_BIN / str(args[0])), *map(str, args[1:])]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    def pg_ctl(self, data: Path, action: str, *extra: str) -> None:
        self.run("pg_ctl", "-D", data, "-l", data.parent / f"{data.name}.log", "-w",
                 "-t", "60", action, *extra)

    def start_replica(self) -> None:
        self.pg_ctl(self.replica_dir, "start")

    def stop_replica(self) -> None:
        self.pg_ctl(self.replica_dir, "stop", "-m", "fast")

    def make_replica(self) -> None:
        """A fresh replica of the primary as it is now (replaces any previous one)."""
        if (self.replica_dir / "postmaster.pid").exists():
            self.pg_ctl(self.replica_dir, "stop", "-m", "immediate")
        shutil.rmtree(self.replica_dir, ignore_errors=True)
        self.run("pg_basebackup", "-R", "-X", "stream", "--checkpoint=fast", "-D",
                 self.replica_dir, "-h", "127.0.0.1", "-p", str(self.primary_port),
                 "-U", "postgres")
        with open(self.replica_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write(f"\nport = {self.replica_port}\n")
        self.start_replica()

    def stop_all(self) -> None:
        for data in (self.replica_dir, self.primary_dir):
            if (data / "postmaster.pid").exists():
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self.pg_ctl(data, "stop", "-m", "immediate")


def make_pair() -> ReplicaPair:
    """initdb, start the primary, create the `ofp` database, base-backup and start
    the replica. The caller stops it (`stop_all`) and removes `root`."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_basebackup").exists():
        raise PostgresBinariesMissingError(
            f"PostgreSQL server binaries not found in {PG_BIN} (set OFP_PG_BIN): a read"
            " replica needs initdb, pg_ctl and pg_basebackup")
    as_root = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="ofp-test-replica-"))
    if as_root:
        shutil.chown(root, "postgres", "postgres")
    pair = ReplicaPair(root, _free_port(), _free_port(), as_root)
    try:
        pair.run("initdb", "-D", pair.primary_dir, "-U", "postgres", "-A", "trust",
                 "--no-sync", "-E", "UTF8", "--locale", "C")
        with open(pair.primary_dir / "postgresql.conf", "a", encoding="utf-8") as f:
            f.write(_CONF.format(port=pair.primary_port, sockets=root))
        with open(pair.primary_dir / "pg_hba.conf", "a", encoding="utf-8") as f:
            f.write("\nhost replication all 127.0.0.1/32 trust\n"
                    "host all all 127.0.0.1/32 trust\n")
        pair.pg_ctl(pair.primary_dir, "start")
        pair.run("psql", "-h", "127.0.0.1", "-p", str(pair.primary_port), "-U", "postgres",
                 "-d", "postgres", "-c", f"CREATE DATABASE {DATABASE}")
        pair.make_replica()
    except BaseException:
        pair.stop_all()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return pair
