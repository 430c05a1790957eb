"""The local file-bus (docs/contract.md 2.3): `<root>/<topic>/partition=<n>.jsonl`.

The offset of a record is its 0-based line index. A trailing line without a
newline is not written yet and is not read until it is complete.
"""

from __future__ import annotations

import re
from pathlib import Path

from .bus import Batch, PartitionInfo

OFFSET_KIND = "file_line"
_PARTITION_FILE = re.compile(r"^partition=(0|[1-9][0-9]*)\.jsonl$")
_CHUNK = 1 << 20


def topic_dir(root: str | Path, topic: str) -> Path:
    return Path(root) / topic


def list_partitions(root: str | Path, topic: str) -> list[int]:
    d = topic_dir(root, topic)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _PARTITION_FILE.match(p.name)
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


def partition_path(root: str | Path, topic: str, partition: int) -> Path:
    return topic_dir(root, topic) / f"partition={partition}.jsonl"


class PartitionReader:
    """Reads complete lines of one partition file from a line offset on."""

    def __init__(self, path: Path, start_offset: int) -> None:
        self.path = path
        self.next_offset = 0
        self._pos = 0
        self.seek(start_offset)

    def seek(self, offset: int) -> None:
        """Position at line `offset` (scanning from the start of the file)."""
        self.next_offset = 0
        self._pos = 0
        if offset == 0:
            return
        with self.path.open("rb") as f:
            while self.next_offset < offset:
                chunk = f.read(_CHUNK)
                if not chunk:
                    raise ValueError(
                        f"{self.path}: checkpoint {offset} is past the end of the file "
                        f"({self.next_offset} complete lines)"
                    )
                start = 0
                while self.next_offset < offset:
                    nl = chunk.find(b"\n", start)
                    if nl < 0:
                        break
                    start = nl + 1
                    self.next_offset += 1
                self._pos += start if self.next_offset == offset else len(chunk)
                if self.next_offset == offset:
                    break

    def read(self, max_records: int) -> list[tuple[int, bytes]]:
        """Up to `max_records` complete lines as (offset, raw bytes without the newline)."""
        out: list[tuple[int, bytes]] = []
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return out
        with f:
            f.seek(self._pos)
            pending = b""
            while len(out) < max_records:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break  # what is left in `pending` is an incomplete tail
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                # One split per chunk instead of a find and a slice per line.
                lines = lines[: max_records - len(out)]
                n = len(lines)
                out.extend(zip(range(self.next_offset, self.next_offset + n), lines, strict=True))
                self.next_offset += n
                self._pos += sum(map(len, lines)) + n
        return out


class FileBus:
    """The file-bus as a `Bus`: every `partition=<n>.jsonl` file is a partition."""

    offset_kind = OFFSET_KIND

    def __init__(self, root: str | Path, topic: str, *, idle_s: float) -> None:
        self.root = root
        self.stream = topic
        self.idle_s = idle_s

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def discover(self) -> list[PartitionInfo]:
        return [PartitionInfo(p) for p in list_partitions(self.root, self.stream)]

    def is_retryable(self, exc: BaseException) -> bool:
        # A file system that fails for a moment (a network mount) is worth a retry.
        return isinstance(exc, OSError | TimeoutError)

    def open(self, partition: int, checkpoint: int) -> FileSource:
        return FileSource(PartitionReader(partition_path(self.root, self.stream, partition),
                                          checkpoint))


class FileSource:
    def __init__(self, reader: PartitionReader) -> None:
        self.reader = reader

    async def read(self, max_records: int) -> Batch:
        lines = self.reader.read(max_records)
        at_end = len(lines) < max_records
        # Caught up with the file: zero lag, so an idle partition reads as current.
        return Batch(lines, self.reader.next_offset, at_end=at_end, lag_ms=0 if at_end else None)

    async def close(self) -> None:
        return None
