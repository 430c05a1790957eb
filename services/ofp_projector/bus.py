"""What the projector needs from a bus: partitions, and batches read from a checkpoint.

Two buses implement it: the file-bus (`file_bus.FileBus`) and Kinesis
(`kinesis_bus.KinesisBus`). A reader keeps at most one batch in flight: the
projector reads a batch, applies it, and only then reads the next, so the
records held per partition are bounded by the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    parents: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Batch:
    records: list[tuple[int, bytes]]  # (offset, raw record) in offset order
    next_offset: int  # exclusive-next checkpoint after this batch
    at_end: bool  # the reader has caught up with the bus (for --once)
    closes: bool = False  # SHARD_END: nothing follows this batch in the partition
    lag_ms: int | None = None  # how far behind the bus, where the bus says
    # With `closes`: the partition left the bus's retention before it was read to its
    # end, so the records after `next_offset` were deleted upstream (reported, not applied).
    left_retention: bool = False


class PartitionSource(Protocol):
    async def read(self, max_records: int) -> Batch: ...

    async def close(self) -> None: ...


class Bus(Protocol):
    offset_kind: str
    stream: str  # the basis stream: topic (file-bus) or Kinesis stream name
    idle_s: float  # pause after an empty read

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def discover(self) -> list[PartitionInfo]: ...

    def open(self, partition: int, checkpoint: int) -> PartitionSource: ...

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether a retry of the same call can outlive `exc` (throttling, a timeout)."""
        ...
