"""`python -m bench [--quick] [--only NAME ...] [--out docs/benchmarks.md]`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import uvloop

from . import h2load, profile, scenarios
from .pg import BenchPostgres
from .report import Figure, now_utc, render

_SIZE_OPTIONS = ("repeats", "duration_s", "hot_events", "state_keys", "ingest_events",
                 "ingest_repeats", "memory_events", "freshness_repeats", "ingest_partitions",
                 "server_processes", "ingest_replicas", "p99_clients", "sat_clients",
                 "rich_ingest_events", "kind_duration_s", "rich_multi_rate",
                 "rich_hot_rate", "export_rows", "export_chunk_rows", "realistic_keys",
                 "realistic_rich_flows",
                 "churn_s", "churn_days_per_run", "churn_events_per_day")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    parser.add_argument("--only", nargs="+", choices=list(scenarios.SCENARIOS), metavar="NAME",
                        help=f"run only these scenarios: {', '.join(scenarios.SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--note", default="", help="a line shown above the table")
    parser.add_argument("--work-dir", type=Path, help="keep buses, logs and the embedded"
                        " PostgreSQL here (default: a temporary directory, removed)")
    for name in _SIZE_OPTIONS:
        kind = float if isinstance(getattr(scenarios.Sizes(), name), float) else int
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind,
                            help="override the size of the chosen mode")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    return args


async def run(args: argparse.Namespace, work: Path) -> int:
    h2load.h2load_path()  # fail first, with the install hint, rather than after the ingest
    sizes = scenarios.QUICK if args.quick else scenarios.Sizes()
    overrides = {n: getattr(args, n) for n in _SIZE_OPTIONS if getattr(args, n) is not None}
    sizes = dataclasses.replace(sizes, **overrides)
    pg = BenchPostgres.start(work)
    profile.count_postgres_of(await profile.find_postmaster(pg.admin_dsn))
    ctx = scenarios.Context(pg, work, sizes)
    chosen = args.only or list(scenarios.SCENARIOS)
    started = now_utc()
    load_start = os.getloadavg()[0]
    failed: list[str] = []
    for name in chosen:
        t0 = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            await scenarios.SCENARIOS[name](ctx)
        except h2load.H2loadMissingError:
            raise
        except Exception as exc:
            # One broken scenario must not cost the figures of the others: it is
            # recorded as failed (no number) and the exit status says so.
            traceback.print_exc()
            failed.append(name)
            reason = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            have = {f.key for f in ctx.figures}
            for key in scenarios.FIGURES[name]:
                if key not in have:
                    ctx.figures.append(Figure(key, f"{key} (scenario {name})", "", "",
                                              notes=reason, measured_at=now_utc()))
        print(f"bench: {name} finished in {time.monotonic() - t0:.1f} s", file=sys.stderr,
              flush=True)
    figures = sorted(ctx.figures, key=lambda f: scenarios.ORDER.index(f.key))
    shown_args = _shown_args(args.argv)
    mode = "quick (tiny sizes: a smoke run, not a measurement)" if args.quick else "full"
    mode += f"; sizes: {dataclasses.asdict(sizes)}"
    load = f"{load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    text = render(figures, args=shown_args, date=started, database=await pg.describe(),
                  h2load=h2load.version(), mode=mode, note=args.note, load=load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"bench: wrote {args.out}", file=sys.stderr)
    if failed:
        print(f"bench: scenarios failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _shown_args(argv: list[str]) -> str:
    """The command line for the report; the note is shown on its own, not repeated here."""
    kept: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            kept.append(a)
    return shlex.join(kept)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.work_dir is not None:
            args.work_dir.mkdir(parents=True, exist_ok=True)
            return uvloop.run(run(args, args.work_dir.resolve()))
        work = Path(tempfile.mkdtemp(prefix="ofp-bench-"))
        try:
            return uvloop.run(run(args, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except h2load.H2loadMissingError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
