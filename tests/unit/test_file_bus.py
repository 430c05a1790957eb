"""File-bus reading: line offsets, torn tails, restarts (docs/contract.md 2.3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ofp_projector.file_bus import PartitionReader, list_partitions, partition_path


def test_reads_complete_lines_only_and_resumes_when_the_tail_completes(tmp_path: Path) -> None:
    p = partition_path(tmp_path, "t", 0)
    p.parent.mkdir(parents=True)
    p.write_bytes(b"a\nbb\nccc")
    reader = PartitionReader(p, 0)
    assert reader.read(10) == [(0, b"a"), (1, b"bb")]
    assert reader.read(10) == []
    with p.open("ab") as f:
        f.write(b"c\n\n")
    assert reader.read(10) == [(2, b"cccc"), (3, b"")]
    assert reader.next_offset == 4


def test_batches_respect_the_limit_and_a_restart_seeks_by_line(tmp_path: Path) -> None:
    p = partition_path(tmp_path, "t", 3)
    p.parent.mkdir(parents=True)
    p.write_bytes(b"".join(b"%d\n" % i for i in range(10)))
    reader = PartitionReader(p, 0)
    assert [o for o, _ in reader.read(4)] == [0, 1, 2, 3]
    again = PartitionReader(p, 4)
    assert again.read(100)[0] == (4, b"4")
    with pytest.raises(ValueError, match="past the end"):
        PartitionReader(p, 11)


def test_long_lines_span_read_chunks(tmp_path: Path) -> None:
    p = partition_path(tmp_path, "t", 0)
    p.parent.mkdir(parents=True)
    big = b"x" * (3 << 20)
    p.write_bytes(big + b"\nshort\n")
    assert PartitionReader(p, 0).read(5) == [(0, big), (1, b"short")]
    assert PartitionReader(p, 1).read(5) == [(1, b"short")]


def test_partitions_are_discovered_by_file_name(tmp_path: Path) -> None:
    d = tmp_path / "t"
    d.mkdir()
    for name in ("partition=0.jsonl", "partition=12.jsonl", "partition=01.jsonl", "notes.txt"):
        (d / name).write_text("")
    assert list_partitions(tmp_path, "t") == [0, 12]
