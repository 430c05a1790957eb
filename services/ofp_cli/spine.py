"""Reading a training spine (docs/training.md) in chunks: CSV or Parquet.

A spine has one row per (key, as-of) to compute features for:

    as_of      RFC 3339 UTC text (what GetFeatures' as_of_time_utc accepts), or in
               Parquet a timestamp column (a naive one is read as UTC)
    key        `<key_type>:<key_id>`, e.g. flow_id:42; or instead one column per key
               type, named by it (`flow_id`), an empty cell meaning "no key of it"
    groups     optional: `name:version` separated by spaces or commas, a subset of
               the export's groups for this row

Every other column is ignored (join the output back on `row`). The file is
read a chunk at a time and never held whole; a row that cannot be read (a CSV
line with the wrong number of fields, a missing value) is handed on with the
reason, so the export reports it in its place.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import CliError

AS_OF = "as_of"
KEY = "key"
GROUPS = "groups"


@dataclass(slots=True)
class SpineChunk:
    """Consecutive spine rows, column by column."""

    start: int  # the spine row number (0-based, data rows only) of the first row
    as_of: list[Any]  # str, or int µs since the epoch (a timestamp column), or None
    keys: dict[str, list[Any]]  # key column -> cells (str, int or None)
    groups: list[Any] | None
    broken: dict[int, str] = field(default_factory=dict)  # index in chunk -> reason

    def __len__(self) -> int:
        return len(self.as_of)


class Spine:
    """A spine file's layout and its rows, `chunk_rows` at a time."""

    def __init__(self, path: Path, *, key_types: set[str], fmt: str | None = None) -> None:
        self.path = path
        self.format = fmt or _format_of(path)
        columns = self._columns()
        if AS_OF not in columns:
            raise CliError(f"spine {path}: no {AS_OF!r} column (columns: {', '.join(columns)})")
        typed = [c for c in columns if c in key_types]
        if KEY in columns and typed:
            raise CliError(f"spine {path}: give keys either in a {KEY!r} column or in key type"
                           f" columns ({', '.join(typed)}), not both")
        if KEY not in columns and not typed:
            raise CliError(f"spine {path}: no {KEY!r} column and no column named by a key type"
                           f" of the exported groups ({', '.join(sorted(key_types))})")
        self.columns = columns
        self.key_columns = [KEY] if KEY in columns else typed
        self.has_groups = GROUPS in columns

    def _columns(self) -> list[str]:
        try:
            if self.format == "parquet":
                return list(pq.ParquetFile(self.path).schema_arrow.names)
            with _open_text(self.path) as f:
                header = next(csv.reader(f), None)
        except (OSError, pa.ArrowInvalid) as exc:
            raise CliError(f"spine {self.path}: cannot read it ({exc})") from None
        if not header:
            raise CliError(f"spine {self.path}: empty, no header line")
        return [h.strip() for h in header]

    def count_rows(self) -> int | None:
        """The number of rows, for the progress bar: Parquet's metadata, or a fast
        count of a CSV's lines (a quoted field holding a newline makes it an estimate)."""
        if self.format == "parquet":
            return int(pq.ParquetFile(self.path).metadata.num_rows)
        n = 0
        with (gzip.open(self.path, "rb") if self.path.suffix == ".gz"
              else self.path.open("rb")) as f:
            last = b"\n"
            while block := f.read(1 << 20):
                n += block.count(b"\n")
                last = block[-1:]
        return max(0, n - 1 + (last != b"\n"))

    def chunks(self, chunk_rows: int) -> Iterator[SpineChunk]:
        if self.format == "parquet":
            yield from self._parquet_chunks(chunk_rows)
        else:
            yield from self._csv_chunks(chunk_rows)

    def _wanted(self) -> list[str]:
        return [AS_OF, *self.key_columns, *([GROUPS] if self.has_groups else [])]

    def _csv_chunks(self, chunk_rows: int) -> Iterator[SpineChunk]:
        index = {name: i for i, name in enumerate(self.columns)}
        width = len(self.columns)
        at = index[AS_OF]
        key_at = [(c, index[c]) for c in self.key_columns]
        groups_at = index.get(GROUPS) if self.has_groups else None
        start = 0
        with _open_text(self.path) as f:
            reader = csv.reader(f)
            next(reader, None)
            while True:
                chunk = SpineChunk(start, [], {c: [] for c in self.key_columns},
                                   [] if groups_at is not None else None)
                try:
                    for cells in reader:
                        i = len(chunk.as_of)
                        if len(cells) != width:
                            chunk.broken[i] = (f"line has {len(cells)} fields, the header"
                                               f" {width}")
                            cells = [""] * width
                        chunk.as_of.append(cells[at] or None)
                        for c, j in key_at:
                            chunk.keys[c].append(cells[j] or None)
                        if chunk.groups is not None and groups_at is not None:
                            chunk.groups.append(cells[groups_at] or None)
                        if len(chunk.as_of) >= chunk_rows:
                            break
                except (csv.Error, UnicodeDecodeError) as exc:
                    raise CliError(f"spine {self.path}: line {reader.line_num}: {exc}") from None
                if not chunk.as_of:
                    return
                yield chunk
                start += len(chunk)

    def _parquet_chunks(self, chunk_rows: int) -> Iterator[SpineChunk]:
        f = pq.ParquetFile(self.path)
        wanted = self._wanted()
        for name in wanted:
            kind = f.schema_arrow.field(name).type
            ok = (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                  or (name != GROUPS and pa.types.is_integer(kind))
                  or (name == AS_OF and pa.types.is_timestamp(kind)))
            if not ok or (name == AS_OF and pa.types.is_integer(kind)):
                raise CliError(f"spine {self.path}: column {name!r} is {kind}; expected text"
                               + (" or a timestamp" if name == AS_OF else " or an integer"
                                  if name != GROUPS else ""))
        start = 0
        for batch in f.iter_batches(batch_size=chunk_rows, columns=wanted):
            as_of = batch.column(AS_OF)
            if pa.types.is_timestamp(as_of.type):
                # µs since the epoch; a finer unit is truncated like as_of_time_utc's
                # digits past the microsecond.
                as_of = pc.cast(pc.cast(as_of, pa.timestamp("us", as_of.type.tz), safe=False),
                                pa.int64())
            keys = {c: _texts(batch.column(c)) for c in self.key_columns}
            groups = batch.column(GROUPS).to_pylist() if self.has_groups else None
            chunk = SpineChunk(start, as_of.to_pylist(), keys, groups)
            yield chunk
            start += len(chunk)


def _texts(column: pa.Array) -> list[Any]:
    """A key column's cells as text (an integer id 42 is the key id "42")."""
    if pa.types.is_integer(column.type):
        return [None if v is None else str(v) for v in column.to_pylist()]
    return [v or None for v in column.to_pylist()]


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise CliError(f"spine {path}: say --spine-format csv|parquet (unknown file extension)")


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")  # a BOM (Excel) is not a column name
