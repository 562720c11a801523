"""The write-ahead log: nothing acknowledged is lost, no damage is silently accepted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consensus.effects import DecidedRecord, PersistRecord, VoteRecord
from consensus.messages import Block, BlockHeader, Certificate, DecidedBlock, Request, Write
from consensus.wire import encode
from node import wal as wal_module
from node.wal import (
    HEADER_BYTES,
    WalCorruption,
    WalError,
    WalOptions,
    WriteAheadLog,
    frame,
)
from sim.simulation import SimConfig, Simulation

ROOT = Path(__file__).resolve().parents[2]


def vote(seq: int) -> VoteRecord:
    """The record stored at ``seq`` in these tests: each one tells its own place."""
    return VoteRecord(kind="write", regency=seq % 5, height=seq, digest=seq.to_bytes(32, "big"))


def votes(first: int, count: int) -> list[PersistRecord]:
    return [vote(seq) for seq in range(first, first + count)]


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("wal-*.log"))


def reopen(path: Path, **options: int) -> tuple[WriteAheadLog, tuple[PersistRecord, ...]]:
    log, recovered, _ = WriteAheadLog.open(path, WalOptions(**options))
    return log, recovered.records


def build(path: Path, batches: list[int]) -> list[int]:
    """A log of ``vote`` records in batches of the given sizes; the end offset of each."""
    ends = []
    with WriteAheadLog.open(path)[0] as log:
        for size in batches:
            log.append(votes(log.last_seq + 1, size))
            ends.append(segment_files(path)[-1].stat().st_size)
    return ends


# ------------------------------------------------------------------ round trips


def test_a_fresh_log_is_empty_and_reports_so(tmp_path: Path) -> None:
    log, recovered, report = WriteAheadLog.open(tmp_path / "new" / "wal")
    with log:
        assert (recovered.snapshot, recovered.records, recovered.first_seq) == (None, (), 1)
        assert report.torn_tail is None and report.records_replayed == 0
        assert log.append([]) == 0  # an empty batch writes nothing
        assert log.append(votes(1, 3)) == 3
        assert log.append(votes(4, 1)) == 4
    assert [p.name for p in segment_files(tmp_path / "new" / "wal")] == [
        "wal-00000000000000000001.log"
    ]


def test_real_records_of_a_simulated_run_round_trip(tmp_path: Path) -> None:
    sim = Simulation(SimConfig(seed=5, scenario="fallback-leader-crash"))
    assert sim.run().ok
    disk = sim.disks[1]
    assert {type(r).__name__ for r in disk} >= {"DecidedRecord", "EntryRecord", "TermRecord"}
    with WriteAheadLog.open(tmp_path)[0] as log:
        for start in range(0, len(disk), 7):
            assert log.append(disk[start : start + 7]) == min(start + 7, len(disk))
    log, records = reopen(tmp_path)
    with log:
        assert records == tuple(disk)
        assert log.append(votes(len(disk) + 1, 2)) == len(disk) + 2


def test_the_lock_keeps_a_second_opener_out(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path)[0], pytest.raises(WalError, match="in use by another"):
        WriteAheadLog.open(tmp_path)
    WriteAheadLog.open(tmp_path)[0].close()  # closing released it


# ------------------------------------------------------------------ torn tails


def test_every_truncation_of_the_last_record_recovers_exactly_the_earlier_ones(
    tmp_path: Path,
) -> None:
    ends = build(tmp_path, [2, 1, 3, 1])
    (segment,) = segment_files(tmp_path)
    whole = segment.read_bytes()
    start = ends[-2]  # the last record (a batch of one) begins here
    for cut in range(start, len(whole)):
        segment.write_bytes(whole[:cut])
        log, recovered, report = WriteAheadLog.open(tmp_path)
        with log:
            assert recovered.records == tuple(votes(1, 6))
            torn = report.torn_tail
            if cut == start:
                assert torn is None  # the file ends on a batch boundary: nothing was torn
            else:
                assert torn is not None and torn.truncated_to == start
                assert torn.bytes_dropped == cut - start and torn.records_kept == 6
                assert "short header" in torn.reason or "short payload" in torn.reason
                assert torn.cut and recovered.amnesia is None  # never acknowledged
            assert segment.stat().st_size == start
            assert log.append([vote(7)]) == 7
        log, records = reopen(tmp_path)
        log.close()
        assert records == tuple(votes(1, 7))


def test_a_batch_cut_short_is_dropped_whole(tmp_path: Path) -> None:
    ends = build(tmp_path, [2, 4])
    (segment,) = segment_files(tmp_path)
    whole = segment.read_bytes()
    record_bytes = (ends[1] - ends[0]) // 4
    for kept in range(1, 4):  # cut exactly between the batch's records
        segment.write_bytes(whole[: ends[0] + kept * record_bytes])
        log, recovered, report = WriteAheadLog.open(tmp_path)
        log.close()
        assert recovered.records == tuple(votes(1, 2))
        assert report.torn_tail is not None
        assert report.torn_tail.reason == f"batch 3..6 ends after {kept} of 4 records"
        assert report.torn_tail.cut and recovered.amnesia is None


@pytest.mark.parametrize(
    ("where", "reason"),
    [(HEADER_BYTES + 5, "payload checksum mismatch"), (9, "header checksum mismatch")],
    ids=["payload", "header"],
)
def test_a_checksum_failure_in_the_tail_is_truncated_and_reported(
    tmp_path: Path, where: int, reason: str
) -> None:
    ends = build(tmp_path, [3, 1])
    (segment,) = segment_files(tmp_path)
    data = bytearray(segment.read_bytes())
    data[ends[0] + where] ^= 0x10
    segment.write_bytes(bytes(data))
    log, recovered, report = WriteAheadLog.open(tmp_path)
    with log:
        assert recovered.records == tuple(votes(1, 3))
        torn = report.torn_tail
        assert torn is not None and torn.reason == reason
        assert (torn.offset, torn.truncated_to, torn.bytes_dropped) == (
            ends[0],
            ends[0],
            ends[1] - ends[0],
        )
        assert any("torn tail" in line and reason in line for line in report.lines())
        assert segment.stat().st_size == ends[0]
        # Bad bytes, not a cut: the batch may have been acknowledged before it was damaged.
        assert not torn.cut and recovered.amnesia is not None
        assert reason in recovered.amnesia.reason and report.amnesia == recovered.amnesia


def test_a_hole_early_in_the_last_batch_is_a_torn_write_not_corruption(tmp_path: Path) -> None:
    """Pages of an unacknowledged batch reach the disk in any order: later records of the
    torn batch may be whole while an earlier one is not."""
    ends = build(tmp_path, [2, 3])
    (segment,) = segment_files(tmp_path)
    data = bytearray(segment.read_bytes())
    data[ends[0] : ends[0] + 40] = bytes(40)
    segment.write_bytes(bytes(data))
    log, recovered, report = WriteAheadLog.open(tmp_path)
    log.close()
    assert recovered.records == tuple(votes(1, 2))
    assert report.torn_tail is not None and report.torn_tail.reason == "bad magic"
    # A hole is also what an acknowledged batch looks like after the disk lost a page:
    # the two cannot be told apart, so it counts as possible amnesia (the cautious side).
    assert not report.torn_tail.cut and recovered.amnesia is not None


def test_an_undecodable_record_with_a_good_checksum_is_caught(tmp_path: Path) -> None:
    build(tmp_path, [2])
    (segment,) = segment_files(tmp_path)
    forged = b"".join(frame(3, 0, 1, b"\x01\x07\x00\x11\x05"))  # a Write, cut short
    with segment.open("ab") as file:
        file.write(forged)
    log, recovered, report = WriteAheadLog.open(tmp_path)
    log.close()
    assert recovered.records == tuple(votes(1, 2))
    assert report.torn_tail is not None
    assert report.torn_tail.reason.startswith("undecodable record 3: ")


# ------------------------------------------------------------------ corruption


def test_damage_followed_by_a_later_batch_is_corruption_and_changes_nothing(
    tmp_path: Path,
) -> None:
    ends = build(tmp_path, [2, 2, 1])
    (segment,) = segment_files(tmp_path)
    data = bytearray(segment.read_bytes())
    data[ends[0] + HEADER_BYTES + 3] ^= 0x01  # inside record 3: batch 3..4, then batch 5
    segment.write_bytes(bytes(data))
    for _ in range(2):  # refusing released the lock and left the file as it was
        with pytest.raises(WalCorruption, match="record 5 of a later batch follows") as caught:
            WriteAheadLog.open(tmp_path)
        assert caught.value.offset == ends[0] and caught.value.file == segment.name
        assert "payload checksum mismatch" in caught.value.reason
        assert segment.read_bytes() == bytes(data)


def test_an_undecodable_record_in_the_middle_is_corruption(tmp_path: Path) -> None:
    build(tmp_path, [2])
    (segment,) = segment_files(tmp_path)
    with segment.open("ab") as file:
        file.write(b"".join(frame(3, 0, 1, b"garbage")))
        file.write(b"".join(frame(4, 0, 1, encode(vote(4)))))
    with pytest.raises(WalCorruption, match="undecodable record 3"):
        WriteAheadLog.open(tmp_path)


def test_damage_in_an_earlier_segment_is_corruption(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, WalOptions(segment_bytes_target=300))[0] as log:
        for first in range(1, 12, 2):
            log.append(votes(first, 2))
    segments = segment_files(tmp_path)
    assert len(segments) >= 3
    log, records = reopen(tmp_path)
    log.close()
    assert records == tuple(votes(1, 12))
    segments[1].write_bytes(segments[1].read_bytes()[:-1])  # a torn tail, but not the last
    with pytest.raises(WalCorruption, match="later segments follow"):
        WriteAheadLog.open(tmp_path)
    segments[1].unlink()
    with pytest.raises(WalCorruption, match=r"records \d+\.\.\d+ are missing"):
        WriteAheadLog.open(tmp_path)


# ------------------------------------------------------------------ bounds and failures


def test_records_and_batches_over_their_bounds_are_refused_before_writing(tmp_path: Path) -> None:
    log, _ = reopen(tmp_path, record_bytes_max=200, batch_records_max=4)
    with log:
        log.append(votes(1, 2))
        size = segment_files(tmp_path)[0].stat().st_size
        big = VoteRecord(kind="write", regency=0, height=3, digest=bytes(200))
        with pytest.raises(WalError, match=r"record 1 \(VoteRecord\) is \d+ bytes, over the bound"):
            log.append([vote(3), big])
        with pytest.raises(WalError, match="a batch of 5 records, over the bound of 4"):
            log.append(votes(3, 5))
        with pytest.raises(WalError, match="not a persist record"):
            log.append([Write(sender=0, regency=0, height=1, digest=bytes(32))])  # type: ignore[list-item]
        with pytest.raises(WalError, match="kind: expected str"):
            log.append([VoteRecord(kind=7, regency=0, height=1, digest=b"")])  # type: ignore[arg-type]
        assert segment_files(tmp_path)[0].stat().st_size == size  # nothing was written
        assert log.append([vote(3)]) == 3  # and the log is still usable


def test_a_record_over_the_default_bound_is_refused(tmp_path: Path) -> None:
    full = Request(client_id=1, request_number=1, transfers=bytes(128 * 8189), signature=b"")
    header = BlockHeader(height=1, parent_hash=bytes(32), timestamp=0, merkle_root=bytes(32),
                         log_size=1, body_hash=bytes(32), results_hash=bytes(32),
                         state_hash=bytes(32))  # fmt: skip
    requests = tuple(Request(client_id=c, request_number=1, transfers=full.transfers)
                     for c in range(66))  # fmt: skip
    certificate = Certificate(regency=0, height=1, digest=bytes(32), signatures=())
    block = DecidedBlock(block=Block(header=header, requests=requests), certificate=certificate)
    refused = r"record 0 \(DecidedRecord\).*exceeds 67108864"
    with WriteAheadLog.open(tmp_path)[0] as log, pytest.raises(WalError, match=refused):
        log.append([DecidedRecord(decided=block)])


def test_a_failed_fsync_makes_the_log_refuse_further_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _ = reopen(tmp_path)
    log.append(votes(1, 1))

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal_module, "_datasync", failing)
    with pytest.raises(WalError, match="reopen to recover"):
        log.append(votes(2, 1))
    monkeypatch.undo()
    with pytest.raises(WalError, match="unusable"):
        log.append(votes(2, 1))
    log.close()
    log, records = reopen(tmp_path)  # what reached the disk is recovered, checked
    log.close()
    assert records[:1] == (vote(1),)


# ------------------------------------------------------------------ snapshots


def test_snapshots_compact_the_log_and_recovery_starts_from_the_newest(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path)[0] as log:
        log.append(votes(1, 10))
        assert log.snapshot(b"state at 10") == 10
        log.append(votes(11, 5))
        assert {p.name[4:-4].lstrip("0") for p in segment_files(tmp_path)} == {"1", "11"}
        assert log.snapshot(b"state at 15") == 15  # the second: wal-1 is covered by both
        log.append(votes(16, 3))
    assert [p.name for p in segment_files(tmp_path)] == [
        "wal-00000000000000000011.log",
        "wal-00000000000000000016.log",
    ]
    log, recovered, report = WriteAheadLog.open(tmp_path)
    with log:
        assert recovered.snapshot is not None and recovered.snapshot.state == b"state at 15"
        assert (recovered.first_seq, recovered.records) == (16, tuple(votes(16, 3)))
        assert report.snapshot_seq == 15 and not report.snapshots_rejected
        assert log.snapshot(b"state at 18") == 18
    assert sorted(p.name for p in tmp_path.glob("snapshot-*")) == [
        "snapshot-00000000000000000015.snap",
        "snapshot-00000000000000000018.snap",
    ]
    assert [p.name for p in segment_files(tmp_path)] == [
        "wal-00000000000000000016.log",
        "wal-00000000000000000019.log",
    ]


def test_a_snapshot_written_behind_the_tail_keeps_the_records_after_it(tmp_path: Path) -> None:
    """The driver writes a snapshot in a thread while appends go on: the snapshot covers
    the records up to where it started, and every record after that survives the
    compaction that adopting it triggers, and a crash before or after adopting."""
    with WriteAheadLog.open(tmp_path)[0] as log:
        log.append(votes(1, 10))
        log.snapshot(b"state at 10")
        log.append(votes(11, 5))
        with pytest.raises(WalError, match="past the last one"):
            log.write_snapshot(16, b"too far")
        log.write_snapshot(15, b"state at 15")
        log.append(votes(16, 3))  # appended while the snapshot was being written
        log.append(votes(19, 2))
    # A crash before adopting: the written snapshot is used, the later records kept.
    log, recovered, report = WriteAheadLog.open(tmp_path)
    with log:
        assert recovered.snapshot is not None and recovered.snapshot.state == b"state at 15"
        assert recovered.records == tuple(votes(16, 5)) and report.snapshot_seq == 15
        log.append(votes(21, 1))
        log.write_snapshot(20, b"state at 20")
        log.append(votes(22, 2))
        log.adopt_snapshot(20)
        log.append(votes(24, 1))
    assert not (tmp_path / "snapshot-00000000000000000010.snap").exists()
    log, recovered, _ = WriteAheadLog.open(tmp_path)
    with log:
        assert recovered.snapshot is not None and recovered.snapshot.state == b"state at 20"
        assert (recovered.first_seq, recovered.records) == (21, tuple(votes(21, 4)))


def _two_snapshots(path: Path) -> None:
    with WriteAheadLog.open(path)[0] as log:
        log.append(votes(1, 10))
        log.snapshot(b"state at 10")
        log.append(votes(11, 5))
        log.snapshot(b"state at 15")
        log.append(votes(16, 3))


def test_a_deleted_snapshot_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    _two_snapshots(tmp_path)
    (tmp_path / "snapshot-00000000000000000015.snap").unlink()
    log, recovered, report = WriteAheadLog.open(tmp_path)
    log.close()
    assert recovered.snapshot is not None and recovered.snapshot.seq == 10
    assert recovered.records == tuple(votes(11, 8))
    assert report.snapshot_seq == 10 and report.records_replayed == 8


def test_a_corrupt_snapshot_is_rejected_reported_and_the_previous_one_used(
    tmp_path: Path,
) -> None:
    _two_snapshots(tmp_path)
    newest = tmp_path / "snapshot-00000000000000000015.snap"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    log, recovered, report = WriteAheadLog.open(tmp_path)
    with log:
        assert recovered.snapshot == wal_module.Snapshot(seq=10, state=b"state at 10")
        assert recovered.records == tuple(votes(11, 8))
        assert report.snapshots_rejected == (f"{newest.name}: state checksum mismatch",)
        assert any("snapshot rejected" in line for line in report.lines())
        log.snapshot(b"state at 18")  # the rejected one is not counted among the kept
    log, recovered, _ = WriteAheadLog.open(tmp_path)
    log.close()
    assert recovered.snapshot is not None and recovered.snapshot.seq == 18


def test_a_lone_corrupt_snapshot_falls_back_to_a_full_replay(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path)[0] as log:
        log.append(votes(1, 4))
        log.snapshot(b"state at 4")
        log.append(votes(5, 2))
    (tmp_path / "snapshot-00000000000000000004.snap").write_bytes(b"AEGSNAP1 short")
    log, recovered, report = WriteAheadLog.open(tmp_path)
    log.close()
    assert recovered.snapshot is None and recovered.records == tuple(votes(1, 6))
    assert report.snapshot_seq is None and "short header" in report.snapshots_rejected[0]


def test_when_no_snapshot_and_no_log_cover_the_start_it_is_corruption(tmp_path: Path) -> None:
    _two_snapshots(tmp_path)  # wal-1 was compacted away: records 1..10 live in snapshots only
    for snapshot in tmp_path.glob("snapshot-*"):
        snapshot.write_bytes(snapshot.read_bytes()[:-1])
    with pytest.raises(WalCorruption, match=r"records 1\.\.10 are missing and no valid snapshot"):
        WriteAheadLog.open(tmp_path)


def test_an_interrupted_snapshot_is_removed_and_reported(tmp_path: Path) -> None:
    build(tmp_path, [3])
    (tmp_path / "snapshot-00000000000000000003.snap.tmp").write_bytes(b"half")
    log, recovered, report = WriteAheadLog.open(tmp_path)
    log.close()
    assert recovered.records == tuple(votes(1, 3)) and recovered.snapshot is None
    assert report.removed == ("snapshot-00000000000000000003.snap.tmp",)
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------ a real crash

CHILD = """
import sys
from consensus.effects import VoteRecord
from node.wal import WriteAheadLog

def record(seq):
    # Every 7th record is 256 kB, so a kill often lands inside a write.
    digest = seq.to_bytes(8, "big") * (32768 if seq % 7 == 0 else 4)
    return VoteRecord(kind="write", regency=seq % 5, height=seq, digest=digest)

log, recovered, report = WriteAheadLog.open(sys.argv[1])
seq = recovered.last_seq
while True:
    size = 1 + seq % 13
    seq = log.append([record(s) for s in range(seq + 1, seq + 1 + size)])
    print(seq, flush=True)
"""


def _child_record(seq: int) -> VoteRecord:
    digest = seq.to_bytes(8, "big") * (32768 if seq % 7 == 0 else 4)
    return VoteRecord(kind="write", regency=seq % 5, height=seq, digest=digest)


def test_nothing_acknowledged_is_lost_when_the_writer_is_killed(tmp_path: Path) -> None:
    rng = random.Random(7)
    torn_seen = 0
    for _ in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert child.stdout is not None
        acknowledged = [int(child.stdout.readline()) for _ in range(rng.randint(20, 40))]
        time.sleep(rng.random() * 0.02)  # land anywhere in the next write
        os.kill(child.pid, signal.SIGKILL)
        acknowledged += [int(line) for line in child.stdout.read().split()]
        child.wait(timeout=10)
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        log, recovered, report = WriteAheadLog.open(tmp_path)
        log.close()
        torn_seen += report.torn_tail is not None
        assert recovered.last_seq >= max(acknowledged)
        assert recovered.records == tuple(
            _child_record(s) for s in range(1, recovered.last_seq + 1)
        )
    print(f"torn tails recovered: {torn_seen} of 4")


def test_a_short_run_of_foreign_bytes_is_damage_not_a_cut(tmp_path: Path) -> None:
    build(tmp_path, [2])
    (segment,) = segment_files(tmp_path)
    with segment.open("ab") as file:
        file.write(b"\x00garbage!")  # shorter than a header, but no header begins so
    log, recovered, report = WriteAheadLog.open(tmp_path)
    log.close()
    assert recovered.records == tuple(votes(1, 2))
    assert report.torn_tail is not None and "short header" in report.torn_tail.reason
    assert not report.torn_tail.cut and recovered.amnesia is not None


# ------------------------------------------------------------------ amnesia and repair


def _damage_then_later_batch(path: Path) -> tuple[list[int], bytes]:
    """Records 1..5 in batches [2, 2, 1]; a bit of record 3 flipped (batch 5 follows)."""
    ends = build(path, [2, 2, 1])
    (segment,) = segment_files(path)
    data = bytearray(segment.read_bytes())
    data[ends[0] + HEADER_BYTES + 3] ^= 0x01
    segment.write_bytes(bytes(data))
    return ends, bytes(data)


def test_the_amnesia_marker_outlives_restarts_until_cleared(tmp_path: Path) -> None:
    ends, data = _damage_then_later_batch(tmp_path)
    (segment,) = segment_files(tmp_path)
    segment.write_bytes(data[: ends[1]])  # no later batch: a damaged tail, truncated
    before = time.time_ns()
    log, recovered, _ = WriteAheadLog.open(tmp_path)
    with log:
        assert recovered.records == tuple(votes(1, 2)) and recovered.amnesia is not None
        assert before <= recovered.amnesia.detected_ns <= time.time_ns()
        log.append(votes(3, 1))
    log, again, report = WriteAheadLog.open(tmp_path)  # the damage is gone, the marker not
    with log:
        assert again.amnesia == recovered.amnesia and report.torn_tail is None
        assert any("acknowledged records may be lost" in line for line in report.lines())
        log.clear_amnesia()
        assert log.amnesia is None and not (tmp_path / "AMNESIA").exists()
    log, cleared, _ = WriteAheadLog.open(tmp_path)
    log.close()
    assert cleared.amnesia is None and cleared.records == tuple(votes(1, 3))


def test_an_unreadable_amnesia_marker_counts_as_amnesia_now(tmp_path: Path) -> None:
    build(tmp_path, [2])
    (tmp_path / "AMNESIA").write_bytes(b"AEGAMNS1 half a marker")
    log, recovered, _ = WriteAheadLog.open(tmp_path)
    log.close()
    assert recovered.amnesia is not None and "marker is unreadable" in recovered.amnesia.reason
    assert recovered.records == tuple(votes(1, 2))
    log, again, _ = WriteAheadLog.open(tmp_path)  # rewritten whole
    log.close()
    assert again.amnesia == recovered.amnesia


def test_repair_keeps_the_valid_prefix_and_sets_the_rest_aside(tmp_path: Path) -> None:
    ends, data = _damage_then_later_batch(tmp_path)
    (segment,) = segment_files(tmp_path)
    log, recovered, report = WriteAheadLog.open(tmp_path, repair=True)
    with log:
        assert recovered.records == tuple(votes(1, 2)) and log.last_seq == 2
        assert recovered.amnesia is not None
        assert "record 5 of a later batch follows" in recovered.amnesia.reason
        torn = report.torn_tail
        assert torn is not None and not torn.cut and torn.truncated_to == ends[0]
        (aside,) = tmp_path.glob(f"{segment.name}.damaged-*")
        assert aside.read_bytes() == data[ends[0] :]  # evidence kept, byte for byte
        assert log.append(votes(3, 2)) == 4  # the log goes on after the prefix
    log, again, report = WriteAheadLog.open(tmp_path)
    log.close()
    assert again.records == tuple(votes(1, 4)) and report.torn_tail is None
    assert again.amnesia == recovered.amnesia


def test_repair_sets_aside_the_segments_after_a_damaged_one(tmp_path: Path) -> None:
    with WriteAheadLog.open(tmp_path, WalOptions(segment_bytes_target=300))[0] as log:
        for first in range(1, 12, 2):
            log.append(votes(first, 2))
    segments = segment_files(tmp_path)
    segments[1].write_bytes(segments[1].read_bytes()[:-1])
    kept = int(segments[1].name[4:24]) - 1  # segment 0 holds records 1..kept
    log, recovered, report = WriteAheadLog.open(tmp_path, repair=True)
    log.close()
    prefix = len(recovered.records)
    assert kept < prefix < 12 and recovered.records == tuple(votes(1, prefix))
    assert recovered.amnesia is not None and "later segments follow" in recovered.amnesia.reason
    assert [p.name for p in segment_files(tmp_path)] == [s.name for s in segments[:2]]
    assert len(list(tmp_path.glob("wal-*.damaged-*"))) == len(segments) - 1  # 1 tail + the rest
    assert any("set aside" in line for line in report.lines())


def test_repair_of_a_log_no_snapshot_covers_starts_empty_and_fenced(tmp_path: Path) -> None:
    _two_snapshots(tmp_path)
    for snapshot in tmp_path.glob("snapshot-*"):
        snapshot.write_bytes(snapshot.read_bytes()[:-1])
    log, recovered, report = WriteAheadLog.open(tmp_path, repair=True)
    with log:
        assert recovered.records == () and recovered.snapshot is None and log.last_seq == 0
        assert recovered.amnesia is not None and "records 1..10 are missing" in (
            recovered.amnesia.reason
        )
        assert len(report.snapshots_rejected) == 2 and not segment_files(tmp_path)[1:]
        assert log.append(votes(1, 1)) == 1
    log, again, _ = WriteAheadLog.open(tmp_path)
    log.close()
    assert again.records == (vote(1),) and again.amnesia == recovered.amnesia


def test_a_snapshot_its_reader_refuses_is_passed_over(tmp_path: Path) -> None:
    _two_snapshots(tmp_path)

    def problem(state: bytes) -> str | None:
        return "not mine" if state == b"state at 15" else None

    log, recovered, report = WriteAheadLog.open(tmp_path, snapshot_problem=problem)
    log.close()
    assert recovered.snapshot == wal_module.Snapshot(seq=10, state=b"state at 10")
    assert recovered.records == tuple(votes(11, 8))
    assert report.snapshots_rejected == (
        "snapshot-00000000000000000015.snap: state refused: not mine",
    )
