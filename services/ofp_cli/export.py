"""`ofp export`: features for every row of a training spine, as GetFeatures answers them.

    ofp export --spine spine.csv|spine.parquet --out features.parquet \\
        --pins-json @pins.json [--group NAME:VERSION ...] [--policy-revision REV]

Each spine row is a GetFeatures request (the pins, the row's as-of and keys, the
groups); a chunk of rows is planned, read and assembled by `ofp.store.batch_reads`
(the online path's planner, its set-based snapshot statement and its assembly),
so every row's values, basis and snapshot_hash are the ones GetFeatures gives
at the same as-of on the same state. The whole export reads one database
snapshot (one repeatable-read, read-only transaction). The spine is read a chunk
at a time and the output written a row group at a time: memory does not grow
with the spine. docs/training.md is the page for model builders.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ofp.config import Settings
from ofp.contracts.errors import ContractError, ErrorCode
from ofp.contracts.request import ValidRequest, storable_text, validate_request_json
from ofp.contracts.timefmt import format_micros, parse_as_of
from ofp.logs import get_logger
from ofp.policy import FeatureGroup, Policy
from ofp.snapshot import DECIMAL, INT, LIST, TEXT, TIME
from ofp.store.batch_reads import (
    BatchAnswer,
    Planned,
    assemble_batch,
    fetch_batch,
    plan_batch,
)
from ofp.store.rollout import read_rollout

from .client import parse_group, parse_key
from .database import connect, resolve_dsn
from .errors import EXIT_OK, CliError
from .get_features import read_json_arg
from .spine import GROUPS, KEY, Spine, SpineChunk

_log = get_logger("ofp.cli.export")
LOG_INTERVAL_S = 2.0
DEFAULT_CHUNK_ROWS = 2_000
DEFAULT_ROW_GROUP_ROWS = 20_000
GC_THRESHOLD = 50_000  # allocations between young-generation collections (default 700)
OK = "OK"
BAD_ROW = "BAD_ROW"
OUTSIDE_RETENTION = "OUTSIDE_RETENTION"
# The typed value kind of each v1 aggregation (ofp.snapshot's typed values); the
# rest are decimals.
_V1_KIND = {"count": INT, "distinct_count": INT, "approx_distinct_count": INT,
            "first": TEXT, "last": TEXT, "last_n": LIST}
_ARROW = {INT: pa.int64(), DECIMAL: pa.string(), TEXT: pa.string(),
          LIST: pa.list_(pa.string()), TIME: pa.timestamp("us", tz="UTC")}
_OFFSETS = pa.list_(pa.struct([("partition", pa.uint32()), ("offset", pa.string())]))


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common],
                       help="features for every (key, as-of) row of a training spine")
    p.add_argument("--spine", required=True, type=Path, metavar="FILE",
                   help="the spine: CSV (.csv, .csv.gz) or Parquet (.parquet)")
    p.add_argument("--spine-format", choices=("csv", "parquet"),
                   help="the spine's format when its extension does not say")
    p.add_argument("--out", required=True, type=Path, metavar="FILE",
                   help="the Parquet file to write")
    p.add_argument("--pins-json", required=True, metavar="JSON|@FILE",
                   help="the six ContextPins as JSON, or @file, or @- for stdin")
    p.add_argument("--group", action="append", default=[], metavar="NAME:VERSION",
                   help="feature group to export (repeatable; default: every group of"
                        " the revision)")
    p.add_argument("--policy-revision", metavar="REVISION",
                   help="answer with this revision (default: the active one)")
    p.add_argument("--chunk-rows", type=_positive, default=DEFAULT_CHUNK_ROWS, metavar="N",
                   help=f"spine rows per statement (default {DEFAULT_CHUNK_ROWS})")
    p.add_argument("--row-group-rows", type=_positive, default=DEFAULT_ROW_GROUP_ROWS,
                   metavar="N", help="rows per Parquet row group (default"
                   f" {DEFAULT_ROW_GROUP_ROWS})")
    p.add_argument("--with-snapshot", action="store_true",
                   help="add a `snapshot` column: each row's whole snapshot as JSON"
                        " (what `ofp verify` checks)")
    p.set_defaults(run=run)


def now_us() -> int:
    return time.time_ns() // 1000


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


@dataclass
class ExportSummary:
    rows: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    statements: int = 0  # snapshot statements run (one per chunk with a plannable row)
    largest_chunk: int = 0  # most spine rows held at once by the reader
    row_groups: int = 0
    seconds: float = 0.0
    revision: str = ""
    basis_digests: set[str] = field(default_factory=set)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ExportOptions:
    spine: Path
    out: Path
    pins: dict[str, Any]
    groups: tuple[tuple[str, str], ...] = ()  # empty: every group of the revision
    policy_revision: str | None = None
    spine_format: str | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS
    with_snapshot: bool = False


async def run(args: argparse.Namespace, settings: Settings) -> int:
    pins = read_json_arg(args.pins_json, what="--pins-json")
    if not isinstance(pins, dict):
        raise CliError("--pins-json must be a JSON object with the six ContextPins")
    try:
        groups = tuple((g["name"], g["version"]) for g in map(parse_group, args.group))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    options = ExportOptions(
        spine=args.spine, out=args.out, pins=pins, groups=groups,
        policy_revision=args.policy_revision, spine_format=args.spine_format,
        chunk_rows=args.chunk_rows, row_group_rows=args.row_group_rows,
        with_snapshot=args.with_snapshot)
    # Everything loaded so far lives as long as the process: out of the
    # collector's way (as the server does).
    gc.freeze()
    conn = await connect(resolve_dsn(settings))
    try:
        summary = await export(conn, settings, options, progress=_Display())
    finally:
        await conn.close()
    counts = ", ".join(f"{n:,} {s}" for s, n in sorted(summary.statuses.items()))
    print(f"exported {summary.rows:,} rows to {options.out} in {summary.seconds:.1f} s"
          f" ({summary.rows_per_s:,.0f} rows/s): {counts or 'no rows'};"
          f" revision {summary.revision}, basis {', '.join(sorted(summary.basis_digests))}")
    not_ok = summary.rows - summary.statuses[OK]
    if not_ok:
        print(f"{not_ok:,} rows have no features: see their `status` and `detail` columns"
              f" ({summary.statuses[OUTSIDE_RETENTION]:,} outside retention,"
              f" {summary.statuses[BAD_ROW]:,} bad rows)")
    return EXIT_OK


class Progress:
    """Told the rows done so far; the CLI shows a bar or logs, tests stay silent."""

    def start(self, total: int | None) -> None:
        pass

    def update(self, done: int, statuses: Counter[str], *, final: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


class _Display(Progress):
    """A tqdm bar with rate and ETA on a terminal (stderr); otherwise a structured
    log line every few seconds (as `ofp policy backfill` does)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.bar: tqdm[Any] | None = None
        self.total: int | None = None
        self._t0 = time.monotonic()
        self._next_log = 0.0

    def start(self, total: int | None) -> None:
        self.total = total
        self._t0 = time.monotonic()
        if self.tty:
            self.bar = tqdm(total=total, unit="row", unit_scale=True, desc="export",
                            file=sys.stderr, dynamic_ncols=True)

    def update(self, done: int, statuses: Counter[str], *, final: bool = False) -> None:
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(", ".join(f"{s} {n}" for s, n in sorted(statuses.items())
                                               if s != OK), refresh=False)
            self.bar.refresh()
            return
        now = time.monotonic()
        if now < self._next_log and not final:
            return
        self._next_log = now + LOG_INTERVAL_S
        elapsed = now - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (None if self.total is None or rate <= 0
               else round(max(0, self.total - done) / rate, 1))
        _log.warning("export_progress", rows_done=done, rows_total=self.total,
                     rows_per_s=round(rate, 1), eta_s=eta, statuses=dict(statuses),
                     finished=final)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------ the output


@dataclass(frozen=True)
class _GroupColumns:
    group: FeatureGroup
    features: tuple[tuple[str, str], ...]  # (feature name, typed kind), in answer order


def _group_columns(g: FeatureGroup) -> _GroupColumns:
    if g.features is not None:
        names = [(f.name, _V1_KIND.get(f.agg, DECIMAL)) for f in g.features]
    else:
        names = []
        for w in g.windows:
            names += [(f"event_count_{w.name}", INT), (f"amount_sum_{w.name}", DECIMAL)]
    return _GroupColumns(g, (*names, ("last_event_ts_utc", TIME)))


class _Output:
    """Rows buffered column by column and written a row group at a time."""

    def __init__(self, path: Path, spine: Spine, groups: list[_GroupColumns], *,
                 row_group_rows: int, with_snapshot: bool, metadata: dict[str, str]) -> None:
        fields: list[pa.Field] = [pa.field("row", pa.int64(), nullable=False)]
        fields += [pa.field(c, pa.string()) for c in spine.key_columns]
        if spine.has_groups:
            fields.append(pa.field(GROUPS, pa.string()))
        fields += [pa.field("as_of_time_utc", pa.string()),
                   pa.field("as_of", pa.timestamp("us", tz="UTC")),
                   pa.field("status", pa.string(), nullable=False),
                   pa.field("detail", pa.string())]
        self.groups = groups
        for cols_of in groups:
            fields.append(pa.field(f"{cols_of.group.name}__present", pa.bool_()))
            fields += [pa.field(f"{cols_of.group.name}__{name}", _ARROW[kind])
                       for name, kind in cols_of.features]
        fields += [pa.field("freshness_state", pa.string()),
                   pa.field("freshness_flags", pa.list_(pa.string())),
                   pa.field("policy_revision", pa.string()),
                   pa.field("basis_digest", pa.string()),
                   pa.field("basis_offsets", _OFFSETS),
                   pa.field("window_end_utc", pa.string()),
                   pa.field("snapshot_hash", pa.string())]
        if with_snapshot:
            fields.append(pa.field("snapshot", pa.string()))
        self.schema = pa.schema(fields, metadata=metadata)
        self.names = self.schema.names
        self.with_snapshot = with_snapshot
        self.row_group_rows = row_group_rows
        self.columns: dict[str, list[Any]] = {n: [] for n in self.names}
        self.row_groups = 0
        self._offsets: dict[str, list[dict[str, Any]]] = {}
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")

    def add(self, row: int, chunk: SpineChunk, i: int, req: ValidRequest | None,
            status: str, detail: str | None, answer: BatchAnswer | None) -> None:
        cols = self.columns
        cols["row"].append(row)
        for c, values in chunk.keys.items():
            cols[c].append(values[i])
        if chunk.groups is not None:
            cols[GROUPS].append(chunk.groups[i])
        cols["as_of_time_utc"].append(None if req is None else req.as_of_text)
        cols["as_of"].append(None if req is None else req.as_of_us)
        cols["status"].append(status)
        cols["detail"].append(detail)
        snap = None if answer is None else answer.snapshot
        cells = {} if answer is None else {c.group: c for c in answer.typed}
        for cols_of in self.groups:
            name = cols_of.group.name
            cell = cells.get(name)
            cols[f"{name}__present"].append(None if cell is None else cell.last_us is not None)
            by_name = {} if cell is None else {v.name: v for v in cell.values}
            for feature, kind in cols_of.features:
                v = by_name.get(feature)
                if v is not None and v.kind != kind:
                    raise AssertionError(f"{name}.{feature}: typed {v.kind}, column {kind}")
                cols[f"{name}__{feature}"].append(None if v is None else v.value)
        if snap is None:
            for n in ("freshness_state", "freshness_flags", "policy_revision", "basis_digest",
                      "basis_offsets", "window_end_utc", "snapshot_hash"):
                cols[n].append(None)
            if self.with_snapshot:
                cols["snapshot"].append(None)
        else:
            fresh = snap["freshness"]
            basis = snap["eb_offset_basis"]
            digest = basis["basis_digest"]
            offsets = self._offsets.get(digest)
            if offsets is None:
                offsets = self._offsets[digest] = basis["offsets"]
            cols["freshness_state"].append(fresh["state"])
            cols["freshness_flags"].append(fresh["flags"])
            cols["policy_revision"].append(snap["feature_def_policy_rev"]["revision"])
            cols["basis_digest"].append(digest)
            cols["basis_offsets"].append(offsets)
            cols["window_end_utc"].append(basis.get("window_end_utc"))
            cols["snapshot_hash"].append(snap["snapshot_hash"])
            if self.with_snapshot:
                cols["snapshot"].append(json.dumps(snap, sort_keys=True, separators=(",", ":")))
        if len(cols["row"]) >= self.row_group_rows:
            self.flush()

    def flush(self) -> None:
        if not self.columns["row"]:
            return
        table = pa.Table.from_pydict(self.columns, schema=self.schema)
        self._writer.write_table(table, row_group_size=len(table))
        self.row_groups += 1
        self.columns = {n: [] for n in self.names}

    def close(self) -> None:
        self.flush()
        self._writer.close()


# ------------------------------------------------------------------ the rows


@dataclass
class _Prepared:
    chunk: SpineChunk
    requests: list[ValidRequest | None]  # per row; None: `bad` says why
    bad: dict[int, str]  # index in chunk -> why the row is refused


class _RowParser:
    """Spine rows -> GetFeatures requests, validated exactly as the server does."""

    def __init__(self, settings: Settings, options: ExportOptions, spine: Spine,
                 groups: list[FeatureGroup]) -> None:
        self.settings = settings
        self.pins = options.pins
        self.revision = options.policy_revision
        self.spine = spine
        self.groups = {(g.name, g.version) for g in groups}
        self.group_refs = [{"name": g.name, "version": g.version} for g in groups]
        self.default_groups = tuple((g.name, g.version) for g in groups)

    def fast(self, doc: dict[str, Any]) -> ValidRequest | None:
        """The ValidRequest `validate_request_json` gives `doc`, without running the
        schema, when the row is plainly valid: the pins and groups passed once for
        the whole export, and only the row's as-of and keys are new. None for
        anything less plain; the full validation then decides (and explains)."""
        try:
            as_of_us = parse_as_of(doc["as_of_time_utc"])
        except ValueError:
            return None
        keys = tuple((k["key_type"], k["key_id"]) for k in doc["feature_keys"])
        if not 0 < len(keys) <= self.settings.max_keys:
            return None
        for key_type, key_id in keys:
            if not (0 < len(key_type) <= 64 and 0 < len(key_id) <= 256
                    and storable_text(key_type) and storable_text(key_id)):
                return None
        refs = doc["feature_groups"]
        groups = self.default_groups if refs is self.group_refs else tuple(
            (g["name"], g["version"]) for g in refs)
        if len({name for name, _ in groups}) != len(groups):
            return None  # a group twice: the full validation refuses it
        text = doc["as_of_time_utc"]
        if not (len(text) == 27 and text[10] == "T" and text[19] == "." and text[26] == "Z"):
            text = format_micros(as_of_us)  # else it is the canonical form already
        return ValidRequest(pins=self.pins, as_of_us=as_of_us,
                            as_of_text=text, keys=keys, groups=groups,
                            policy_revision=self.revision)

    def template(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"pins": self.pins, "feature_groups": self.group_refs}
        if self.revision is not None:
            doc["policy_revision"] = self.revision
        return doc

    def prepare(self, chunk: SpineChunk) -> _Prepared:
        template = self.template()
        out = _Prepared(chunk, [], {})
        for i in range(len(chunk)):
            bad = chunk.broken.get(i)
            doc: dict[str, Any] | None = None
            if bad is None:
                try:
                    doc = self._request(chunk, i, template)
                except ValueError as exc:
                    bad = str(exc)
            if doc is not None:
                try:
                    req = self.fast(doc) or validate_request_json(
                        doc, max_keys=self.settings.max_keys,
                        max_groups=self.settings.max_groups)
                except ContractError as exc:
                    bad = exc.detail
                else:
                    out.requests.append(req)
                    continue
            out.requests.append(None)
            out.bad[i] = bad or "unreadable row"
        return out

    def _request(self, chunk: SpineChunk, i: int, template: dict[str, Any]) -> dict[str, Any]:
        as_of = chunk.as_of[i]
        if as_of is None:
            raise ValueError("as_of: empty")
        if isinstance(as_of, int):
            try:
                as_of = format_micros(as_of)
            except (ValueError, OverflowError):
                raise ValueError(f"as_of: {as_of} µs is outside the calendar") from None
        keys: list[dict[str, str]] = []
        for column, values in chunk.keys.items():
            v = values[i]
            if v is None:
                continue
            keys.append(parse_key(v) if column == KEY else {"key_type": column, "key_id": v})
        if not keys:
            raise ValueError(f"no key ({' or '.join(chunk.keys)} empty)")
        doc = dict(template)
        doc["as_of_time_utc"] = as_of
        doc["feature_keys"] = keys
        if chunk.groups is not None and chunk.groups[i] is not None:
            refs = []
            for text in chunk.groups[i].replace(",", " ").split():
                ref = parse_group(text)
                if (ref["name"], ref["version"]) not in self.groups:
                    raise ValueError(f"groups: {text} is not one of the exported groups")
                refs.append(ref)
            if refs:
                doc["feature_groups"] = refs
        return doc


# ------------------------------------------------------------------ the export


async def export(conn: asyncpg.Connection, settings: Settings, options: ExportOptions,
                 progress: Progress | None = None) -> ExportSummary:
    """Write the features of every spine row to `options.out`; one database snapshot."""
    thresholds = gc.get_threshold()
    # A chunk allocates hundreds of thousands of short-lived objects (requests,
    # plans, snapshots) and the output buffer holds a row group's worth: with the
    # default thresholds the collector's passes over them cost a third of the
    # export's CPU; they hold no reference cycles worth collecting early.
    gc.set_threshold(GC_THRESHOLD, 20, 100)
    try:
        return await _export(conn, settings, options, progress or Progress())
    finally:
        gc.set_threshold(*thresholds)


async def _export(conn: asyncpg.Connection, settings: Settings, options: ExportOptions,
                  progress: Progress) -> ExportSummary:
    summary = ExportSummary()
    t0 = time.monotonic()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # A chunk's statement is costly enough to cross jit_above_cost; compiling it
        # (PostgreSQL 15 with LLVM: ~160 ms per 2,000 rows) costs more than it saves.
        await conn.execute("SET LOCAL jit = off")
        rollout = await read_rollout(conn)
        if rollout is None:
            raise CliError("no active feature policy yet")
        policy: Policy | None = (rollout.active if options.policy_revision is None
                                 else rollout.servable(options.policy_revision))
        if policy is None:
            raise CliError(f"policy revision {options.policy_revision!r} is not served"
                           " (the active one, the previous one, or a staged one that has"
                           " caught up)")
        groups = _chosen_groups(policy, options.groups)
        spine = Spine(options.spine, key_types={g.key_type for g in groups},
                      fmt=options.spine_format)
        parser = _RowParser(settings, options, spine, groups)
        try:  # the pins and groups once, with the contract's own messages
            validate_request_json({**parser.template(), "as_of_time_utc": "2026-01-01T00:00:00Z",
                                   "feature_keys": [{"key_type": "k", "key_id": "1"}]},
                                  max_keys=settings.max_keys, max_groups=settings.max_groups)
        except ContractError as exc:
            raise CliError(f"{exc.code}: {exc.detail}") from None
        stream = settings.bus_stream(policy.source_topic)
        revision = (policy.policy_id, policy.revision)
        summary.revision = policy.revision
        metadata = {"ofp.stream": stream, "ofp.policy_id": policy.policy_id,
                    "ofp.revision": policy.revision,
                    "ofp.content_digest": policy.content_digest,
                    "ofp.pins": json.dumps(options.pins, sort_keys=True),
                    "ofp.spine": str(options.spine)}
        progress.start(spine.count_rows())
        # Written beside the target and renamed at the end: a failed export never
        # leaves a file that looks complete.
        partial = options.out.with_name(options.out.name + ".partial")
        out = _Output(partial, spine, [_group_columns(g) for g in groups],
                      row_group_rows=options.row_group_rows,
                      with_snapshot=options.with_snapshot, metadata=metadata)
        try:
            await _run_chunks(conn, settings, spine, parser, out, policy, rollout.group_ids,
                              rollout.epoch, stream, revision, options.chunk_rows, summary,
                              progress)
            out.close()
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
        finally:
            progress.close()
        partial.replace(options.out)
    summary.row_groups = out.row_groups
    summary.seconds = time.monotonic() - t0
    return summary


def _chosen_groups(policy: Policy, wanted: tuple[tuple[str, str], ...]) -> list[FeatureGroup]:
    if not wanted:
        return list(policy.groups)
    out = []
    for name, version in dict.fromkeys(wanted):
        g = policy.group(name, version)
        if g is None:
            known = ", ".join(f"{x.name}:{x.version}" for x in policy.groups)
            raise CliError(f"feature group {name}:{version} is not in revision"
                           f" {policy.revision} (known: {known})")
        out.append(g)
    return out


async def _run_chunks(conn: asyncpg.Connection, settings: Settings, spine: Spine,
                      parser: _RowParser, out: _Output, policy: Policy,
                      group_ids: dict[tuple[str, str], int], epoch: int, stream: str,
                      revision: tuple[str, str], chunk_rows: int, summary: ExportSummary,
                      progress: Progress) -> None:
    """Chunk after chunk; while PostgreSQL runs one chunk's statement, this process
    assembles and writes the previous chunk and reads the next one."""
    chunks: Iterator[SpineChunk] = spine.chunks(chunk_rows)
    max_lag_us = settings.max_basis_lag_s * 1_000_000

    def take() -> tuple[_Prepared, list[Planned | ContractError]] | None:
        chunk = next(chunks, None)
        if chunk is None:
            return None
        summary.largest_chunk = max(summary.largest_chunk, len(chunk))
        prepared = parser.prepare(chunk)
        requests = [r if r is not None else ContractError(ErrorCode.INVALID_REQUEST, "bad row")
                    for r in prepared.requests]
        return prepared, plan_batch(requests, policy, group_ids)

    def finish(prepared: _Prepared, planned: list[Planned | ContractError],
               rows: list[Any]) -> None:
        for row in rows:
            if row is not None and row.epoch != epoch:
                raise CliError("the rollout moved inside the export's snapshot")  # never
        answers = assemble_batch(planned, rows, stream=stream, max_basis_lag_us=max_lag_us,
                                 created_at_us=now_us())
        chunk = prepared.chunk
        for i, answer in enumerate(answers):
            bad = prepared.bad.get(i)
            if bad is not None:
                status, detail, ans = BAD_ROW, bad, None
            elif answer.error is not None:
                err = answer.error
                status = OUTSIDE_RETENTION if answer.outside_retention else err.code.value
                detail, ans = err.detail, None
            else:
                status, detail, ans = OK, None, answer
                assert answer.snapshot is not None
                summary.basis_digests.add(answer.snapshot["eb_offset_basis"]["basis_digest"])
            summary.statuses[status] += 1
            out.add(chunk.start + i, chunk, i, prepared.requests[i], status, detail, ans)
        summary.rows += len(chunk)
        progress.update(summary.rows, summary.statuses)

    current = take()
    pending: tuple[_Prepared, list[Planned | ContractError], list[Any]] | None = None
    while current is not None or pending is not None:
        fetch: asyncio.Future[list[Any] | None] | None = None
        if current is not None:
            if any(isinstance(p, Planned) for p in current[1]):
                summary.statements += 1
            fetch = asyncio.ensure_future(
                fetch_batch(conn, stream=stream, planned=current[1], revision=revision))
            await asyncio.sleep(0)  # the statement is on its way before the CPU work below
        try:
            if pending is not None:
                finish(*pending)
                pending = None
            following = take() if current is not None else None
        except BaseException:
            if fetch is not None:
                fetch.cancel()
            raise
        if current is not None and fetch is not None:
            rows = await fetch
            if rows is None:
                raise CliError(f"policy revision {revision[1]} is no longer recorded")
            pending = (current[0], current[1], rows)
        current = following
    progress.update(summary.rows, summary.statuses, final=True)
