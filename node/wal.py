"""The write-ahead log: persist records are durable before anything leaves the process.

Guarantees:

* ``append(records)`` returns only once the records and everything before them
  are on stable storage: one write of the whole batch, then one ``fdatasync``
  (group commit).  It returns the sequence number of the batch's last record;
  sequence numbers start at 1 and have no gaps.
* A batch is atomic across a crash: recovery returns all of it or none of it
  (every record carries its place in its batch, so a batch missing a record
  is recognised as a torn write).
* Recovery never silently accepts damage.  A torn or corrupt tail (short
  header, short payload, checksum mismatch, undecodable payload, a batch cut
  short) is reported (where, what, how much, why) and the file is truncated
  to the last whole batch.  Damage followed by a record of a *later* batch is
  not a torn write, since a batch is written only after the one before it was
  acknowledged: that is ``WalCorruption``, raised with nothing on disk changed,
  and the caller decides.
* A torn tail is a *cut* when the data simply ends inside a batch (a prefix of
  what one write put there: what a killed process or a lost page cache
  leaves); that batch was never acknowledged, so nothing that left the process
  depended on it.  Any other damage (bad bytes, a gap, a broken segment) may
  have taken acknowledged records with it: before changing a byte, recovery
  then writes the durable *amnesia marker* (``AMNESIA``: when it was found and
  why) and reports it in ``Recovered.amnesia`` on every open until the caller,
  having made up for what it may have forgotten, calls ``clear_amnesia``.
* ``repair=True`` turns ``WalCorruption`` into a recovery of the longest valid
  prefix of the log (the newest valid snapshot and the records that follow it
  without a gap): the marker is written first, then the damaged bytes and every
  later segment are set aside as ``*.damaged-<ns>`` files (never deleted: they
  are evidence for the operator) and the log goes on after the prefix.
* Snapshots are written atomically (temporary file, fsync, rename, fsync of
  the directory) with a checksum and the sequence number they cover.  The
  newest ``snapshots_kept`` snapshots are kept with every log segment holding
  a record after the oldest of them (the whole log while there are fewer), so
  a deleted or corrupt snapshot falls back to an older one or to a full
  replay.  Recovery = the newest valid snapshot + replay of later records.
* Bounded: a record over ``record_bytes_max`` or a batch over
  ``batch_records_max`` is refused with ``WalError`` before anything is
  written; a segment is closed once it passes ``segment_bytes_target``.  A
  ``CheckpointRecord`` carries a ledger snapshot that grows with the ledger:
  it alone is bounded by ``WAL_CHECKPOINT_RECORD_BYTES_MAX`` instead (encoded
  and decoded with that bound, ``encode_record``/``decode_record``), and one
  over it is refused with ``WalRecordTooLarge`` so the caller can go on
  without it.  What peers and clients send keeps ``WIRE_BYTES_MAX``.
* One process at a time: an exclusive ``flock`` on the directory's lock file.

It does not guarantee what no checksum can: damage to the last acknowledged
batch (the disk losing fsynced data) looks exactly like a torn write and is
dropped, reported (as possible amnesia unless it is a mere cut).  A log
shortened at a batch boundary, or cut inside an acknowledged batch (a file
truncated behind the log's back), cannot be told from an honest one.  After a
failed write or fsync the log refuses further use: what reached the disk is
unknown, so the process must reopen it.

Format.  Segment files ``wal-<first sequence, 20 digits>.log`` hold frames:
a 32-byte header (magic ``AWR1``, payload length u32, sequence u64, index in
the batch u32, batch length u32, payload CRC u32, then the CRC of those 28
bytes), then the payload, ``encode_record(record)`` (``consensus.wire``).  Checksums are
CRC-32 (``zlib.crc32``, the ISO-HDLC/gzip polynomial), not CRC-32C, which the
standard library lacks.  Snapshot files ``snapshot-<sequence>.snap``: a
32-byte header (magic ``AEGSNAP1``, covered sequence u64, state length u64,
state CRC u32, header CRC u32), then the state.  The amnesia marker: magic
``AEGAMNS1``, detection time u64 (ns since the epoch), reason length u32, the
reason (UTF-8), then the CRC u32 of all that.  All integers big-endian.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import time
import typing
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from consensus.effects import CheckpointRecord, PersistRecord
from consensus.wire import WIRE_BYTES_MAX, WireError, decode_one_of, encode

WAL_RECORD_BYTES_MAX: Final = WIRE_BYTES_MAX  # one encoded record (a 64-request block fits)
# One CheckpointRecord: its snapshot is about 128 bytes per transfer, so 64 MiB is
# passed near 520,000 transfers; 1 GiB lasts to about 8 million.  Frame lengths are
# u32.  Read when called, so tests can lower it.
WAL_CHECKPOINT_RECORD_BYTES_MAX: Final = 1024 * 1024 * 1024
WAL_BATCH_RECORDS_MAX: Final = 65_536
SEGMENT_BYTES_TARGET: Final = 64 * 1024 * 1024
SNAPSHOT_BYTES_MAX: Final = 16 * 1024 * 1024 * 1024
SNAPSHOTS_KEPT: Final = 2

PERSIST_RECORD_TYPES: Final[tuple[type, ...]] = typing.get_args(PersistRecord)

_FRAME = struct.Struct(">4sIQIII")  # magic, payload bytes, seq, index, batch length, payload crc
_FRAME_MAGIC = b"AWR1"
_SNAPSHOT = struct.Struct(">8sQQI")  # magic, covered seq, state bytes, state crc
_SNAPSHOT_MAGIC = b"AEGSNAP1"
_AMNESIA = struct.Struct(">8sQI")  # magic, detected at (ns), reason bytes
_AMNESIA_MAGIC = b"AEGAMNS1"
_AMNESIA_NAME = "AMNESIA"
_AMNESIA_REASON_BYTES_MAX = 4096
_CRC = struct.Struct(">I")
HEADER_BYTES: Final = _FRAME.size + _CRC.size
assert HEADER_BYTES == 32 and _SNAPSHOT.size + _CRC.size == 32
_SEGMENT_NAME = re.compile(r"wal-(\d{20})\.log")
_SNAPSHOT_NAME = re.compile(r"snapshot-(\d{20})\.snap")
_LOCK_NAME = "LOCK"
_IOV_MAX = 1024  # POSIX guarantees at least 16; Linux allows 1024 buffers per writev
_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)  # size is data here


class WalError(Exception):
    """The log cannot do what was asked: a record too large, a failed disk, a locked log."""


class WalRecordTooLarge(WalError):
    """A record over its bound, refused before anything was written: ``index`` in the batch."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class WalCorruption(WalError):
    """Damage that is not a torn tail: acknowledged records are missing or unreadable."""

    def __init__(self, file: str, offset: int, reason: str) -> None:
        super().__init__(f"{file} at offset {offset}: {reason}")
        self.file = file
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class WalOptions:
    record_bytes_max: int = WAL_RECORD_BYTES_MAX
    batch_records_max: int = WAL_BATCH_RECORDS_MAX
    segment_bytes_target: int = SEGMENT_BYTES_TARGET
    snapshot_bytes_max: int = SNAPSHOT_BYTES_MAX
    snapshots_kept: int = SNAPSHOTS_KEPT

    def __post_init__(self) -> None:
        if not 0 < self.record_bytes_max <= WAL_RECORD_BYTES_MAX:
            raise ValueError(f"record_bytes_max must be in 1..{WAL_RECORD_BYTES_MAX}")
        if not 0 < self.batch_records_max <= WAL_BATCH_RECORDS_MAX:
            raise ValueError(f"batch_records_max must be in 1..{WAL_BATCH_RECORDS_MAX}")
        if self.segment_bytes_target <= 0 or self.snapshot_bytes_max <= 0:
            raise ValueError("segment_bytes_target and snapshot_bytes_max must be positive")
        if self.snapshots_kept < 1:
            raise ValueError("snapshots_kept must be at least 1")


@dataclass(frozen=True, slots=True)
class Amnesia:
    """The log lost records that may have been acknowledged: what left the process
    because of them (votes, acknowledgements) may be forgotten now."""

    detected_ns: int  # wall clock when the damage was found: the loss happened before
    reason: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    seq: int  # the last record the state includes
    state: bytes


@dataclass(frozen=True, slots=True)
class Recovered:
    """What the log holds: the newest valid snapshot, then every later record in order."""

    snapshot: Snapshot | None
    records: tuple[PersistRecord, ...]
    first_seq: int  # the sequence number of records[0]
    amnesia: Amnesia | None = None  # set until ``clear_amnesia``

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.records) - 1


@dataclass(frozen=True, slots=True)
class TornTail:
    segment: str
    offset: int  # where the damage was found
    truncated_to: int  # the end of the last whole batch: the file's new size
    records_kept: int  # in this segment
    bytes_dropped: int
    reason: str
    cut: bool  # the data just ends inside a batch: an unacknowledged write, nothing lost


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    snapshot_seq: int | None  # the snapshot recovery started from, None: a full replay
    snapshots_rejected: tuple[str, ...]  # "snapshot-...: why", newest first
    segments_read: tuple[str, ...]
    records_replayed: int
    torn_tail: TornTail | None
    removed: tuple[str, ...]  # leftovers of interrupted snapshots
    repaired: tuple[str, ...] = ()  # what ``repair`` set aside, and why
    amnesia: Amnesia | None = None

    def lines(self) -> list[str]:
        start = "a full replay" if self.snapshot_seq is None else f"snapshot {self.snapshot_seq}"
        lines = [
            f"recovered from {start}: {self.records_replayed} records replayed "
            f"from {len(self.segments_read)} segment(s)"
        ]
        lines += [f"snapshot rejected: {reason}" for reason in self.snapshots_rejected]
        if self.torn_tail is not None:
            torn = self.torn_tail
            kind = "cut short (an unacknowledged write)" if torn.cut else "damaged"
            lines.append(
                f"torn tail in {torn.segment} at offset {torn.offset}, {kind}: {torn.reason}; "
                f"kept {torn.records_kept} records, dropped {torn.bytes_dropped} bytes"
            )
        lines += [f"repaired: {what}" for what in self.repaired]
        lines += [f"removed {name}" for name in self.removed]
        if self.amnesia is not None:
            lines.append(
                f"acknowledged records may be lost ({self.amnesia.reason}); "
                f"damage found at {self.amnesia.detected_ns} ns"
            )
        return lines


# ------------------------------------------------------------------ records


def encode_record(record: PersistRecord) -> bytes:
    """A record as the WAL stores it: a checkpoint under its own, larger bound."""
    if isinstance(record, CheckpointRecord):
        return encode(record, bytes_max=WAL_CHECKPOINT_RECORD_BYTES_MAX)
    return encode(record)


def decode_record(payload: bytes) -> PersistRecord:
    """The record ``encode_record`` stored; ``WireError`` for anything else.  Only a
    checkpoint may be over ``WAL_RECORD_BYTES_MAX`` (and ``WIRE_BYTES_MAX``)."""
    bytes_max = WAL_CHECKPOINT_RECORD_BYTES_MAX
    record = decode_one_of(payload, PERSIST_RECORD_TYPES, bytes_max=bytes_max)
    if not isinstance(record, CheckpointRecord) and len(payload) > WAL_RECORD_BYTES_MAX:
        raise WireError(f"a {type(record).__name__} of {len(payload)} bytes, over the bound")
    return typing.cast(PersistRecord, record)


# ------------------------------------------------------------------ frames


@dataclass(frozen=True, slots=True)
class _Frame:
    seq: int
    index: int  # the record's place in its batch
    count: int  # the batch's length
    payload: bytes
    end: int  # offset after the frame

    @property
    def batch_first(self) -> int:
        return self.seq - self.index


def frame(seq: int, index: int, count: int, payload: bytes) -> tuple[bytes, bytes]:
    """(header, payload) of one record as stored; exposed for tests that forge files."""
    assert 0 <= index < count and len(payload) <= WAL_CHECKPOINT_RECORD_BYTES_MAX
    head = _FRAME.pack(_FRAME_MAGIC, len(payload), seq, index, count, zlib.crc32(payload))
    return head + _CRC.pack(zlib.crc32(head)), payload


def _parse_frame(data: bytes, offset: int) -> _Frame | str:
    """The frame at ``offset``, or why there is none."""
    left = len(data) - offset
    if left < HEADER_BYTES:
        return f"short header ({left} of {HEADER_BYTES} bytes)"
    magic, size, seq, index, count, payload_crc = _FRAME.unpack_from(data, offset)
    if magic != _FRAME_MAGIC:
        return "bad magic"
    (header_crc,) = _CRC.unpack_from(data, offset + _FRAME.size)
    if zlib.crc32(data[offset : offset + _FRAME.size]) != header_crc:
        return "header checksum mismatch"
    if size > WAL_CHECKPOINT_RECORD_BYTES_MAX or not index < count <= WAL_BATCH_RECORDS_MAX:
        return "header out of bounds"
    start = offset + HEADER_BYTES
    if size > len(data) - start:
        return f"short payload ({len(data) - start} of {size} bytes)"
    payload = data[start : start + size]
    if zlib.crc32(payload) != payload_crc:
        return "payload checksum mismatch"
    return _Frame(seq=seq, index=index, count=count, payload=payload, end=start + size)


@dataclass(frozen=True, slots=True)
class _Scan:
    records: list[tuple[int, PersistRecord]]  # (seq, record) of whole batches only
    end: int  # offset after the last whole batch
    damage: str | None  # why the scan stopped before the end of the data
    damage_offset: int
    cut: bool  # the damage is only that the data ends inside a batch


def _is_cut(data: bytes, offset: int, reason: str) -> bool:
    """Does the data just end inside the frame at ``offset`` (what a write that never
    finished leaves), rather than hold bytes that cannot be there?"""
    if reason.startswith("short payload"):
        return True  # the header's checksum held: a real frame, cut off
    present = data[offset : offset + len(_FRAME_MAGIC)]
    return reason.startswith("short header") and _FRAME_MAGIC.startswith(present)


def _scan(data: bytes, first_seq: int) -> _Scan:
    """Read whole batches from the start of a segment until the data ends or is damaged."""
    records: list[tuple[int, PersistRecord]] = []
    pending: list[tuple[int, PersistRecord]] = []
    offset = end = batch_count = 0
    damage = None
    cut = False
    while offset < len(data) and damage is None:
        parsed = _parse_frame(data, offset)
        due = first_seq + len(records) + len(pending)
        if isinstance(parsed, str):
            damage = parsed
            cut = _is_cut(data, offset, parsed)
        elif parsed.seq != due:
            damage = f"record {parsed.seq} where {due} was due"
        elif parsed.index != len(pending) or (pending and parsed.count != batch_count):
            damage = f"record {parsed.index} of a batch of {parsed.count} out of place"
        else:
            try:
                record = decode_record(parsed.payload)
            except WireError as error:
                damage = f"undecodable record {parsed.seq}: {error}"
                continue
            pending.append((parsed.seq, record))
            batch_count = parsed.count
            offset = parsed.end
            if parsed.index == parsed.count - 1:
                records += pending
                pending = []
                end = offset
    if damage is None and pending:
        first, count = pending[0][0], batch_count
        damage = f"batch {first}..{first + count - 1} ends after {len(pending)} of {count} records"
        cut = True
    return _Scan(records=records, end=end, damage=damage, damage_offset=offset, cut=cut)


def _later_batch(data: bytes, start: int, torn_first: int) -> int | None:
    """The sequence number of a whole, checksummed record after ``start`` that belongs to
    another batch than the torn one (which begins at ``torn_first``), if there is one."""
    position = data.find(_FRAME_MAGIC, start)
    while position != -1:
        parsed = _parse_frame(data, position)
        if not isinstance(parsed, str) and parsed.batch_first != torn_first:
            return parsed.seq
        position = data.find(_FRAME_MAGIC, position + 1)
    return None


# ------------------------------------------------------------------ files


def _segment_name(first_seq: int) -> str:
    return f"wal-{first_seq:020d}.log"


def _snapshot_name(seq: int) -> str:
    return f"snapshot-{seq:020d}.snap"


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, parts: Sequence[bytes]) -> int:
    """Write every part at the file's end; ``writev`` may write less than asked."""
    views = [memoryview(p) for p in parts if p]
    written_total = 0
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first : first + _IOV_MAX])
        if written <= 0:
            raise OSError("writev wrote nothing")
        written_total += written
        while written:
            if written >= len(views[first]):
                written -= len(views[first])
                first += 1
            else:
                views[first] = views[first][written:]
                written = 0
    return written_total


def _read_snapshot(path: Path, seq: int, bytes_max: int) -> bytes | str:
    """The state in a snapshot file, or why it is not valid."""
    size = path.stat().st_size
    if size < 32:
        return f"short header ({size} of 32 bytes)"
    if size - 32 > bytes_max:
        return f"{size - 32} bytes of state, over the bound of {bytes_max}"
    data = path.read_bytes()
    magic, covered, length, state_crc = _SNAPSHOT.unpack_from(data)
    (header_crc,) = _CRC.unpack_from(data, _SNAPSHOT.size)
    if magic != _SNAPSHOT_MAGIC:
        return "bad magic"
    if zlib.crc32(data[: _SNAPSHOT.size]) != header_crc:
        return "header checksum mismatch"
    if covered != seq:
        return f"covers record {covered} but is named for {seq}"
    if length != len(data) - 32:
        return f"holds {len(data) - 32} bytes of state, its header says {length}"
    state = data[32:]
    if zlib.crc32(state) != state_crc:
        return "state checksum mismatch"
    return state


@dataclass(slots=True)
class _Listing:
    segments: list[int]  # first sequence numbers, ascending
    snapshots: list[int]  # covered sequence numbers, ascending
    leftovers: list[str]  # temporary files of interrupted snapshots


def _list(path: Path) -> _Listing:
    listing = _Listing(segments=[], snapshots=[], leftovers=[])
    for name in sorted(os.listdir(path)):
        if match := _SEGMENT_NAME.fullmatch(name):
            listing.segments.append(int(match[1]))
        elif match := _SNAPSHOT_NAME.fullmatch(name):
            listing.snapshots.append(int(match[1]))
        elif name.endswith(".tmp") and (
            name.startswith("snapshot-") or name == f"{_AMNESIA_NAME}.tmp"
        ):
            listing.leftovers.append(name)
    return listing


# ------------------------------------------------------------------ the log


class WriteAheadLog:
    """An open log; not thread-safe (the node's driver owns it), except that
    ``write_snapshot`` may run in another thread alongside ``append``."""

    def __init__(
        self,
        path: Path,
        options: WalOptions,
        lock_fd: int,
        *,
        repair: bool = False,
        snapshot_problem: Callable[[bytes], str | None] | None = None,
    ) -> None:
        self._path = path
        self._options = options
        self._lock_fd = lock_fd
        self._repair = repair
        self._snapshot_problem = snapshot_problem
        self._amnesia: Amnesia | None = None
        self._fd = -1
        self._segments: list[int] = []  # every segment on disk, the open one last
        self._segment_bytes = 0
        self._segment_records = 0
        self._snapshots: list[int] = []  # valid snapshots on disk, ascending
        self._last_seq = 0
        self._failed: str | None = None

    @property
    def last_seq(self) -> int:
        """The sequence number of the last durable record (0: none yet)."""
        return self._last_seq

    @property
    def path(self) -> Path:
        return self._path

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        options: WalOptions | None = None,
        *,
        repair: bool = False,
        snapshot_problem: Callable[[bytes], str | None] | None = None,
    ) -> tuple[WriteAheadLog, Recovered, RecoveryReport]:
        """Open (creating if need be) the log in ``directory`` and recover what it holds.

        Raises ``WalCorruption`` if acknowledged records are damaged or missing (the
        files are left as they were) unless ``repair``, which recovers the longest
        valid prefix instead (see the module's guarantees); ``WalError`` if another
        process holds the log.  ``snapshot_problem`` judges a snapshot's state once its
        checksum held: a state it refuses is passed over like a corrupt one."""
        path = Path(directory)
        if not path.is_dir():
            path.mkdir(parents=True)
            _fsync_directory(path.parent)
        lock_fd = os.open(path / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise WalError(f"{path} is in use by another process") from None
        wal = cls(
            path,
            options or WalOptions(),
            lock_fd,
            repair=repair,
            snapshot_problem=snapshot_problem,
        )
        try:
            recovered, report = wal._recover()
        except BaseException:
            wal.close()
            raise
        return wal, recovered, report

    def append(self, records: Sequence[PersistRecord]) -> int:
        """Make ``records`` durable as one batch; the last one's sequence number."""
        self._check_usable()
        if len(records) > self._options.batch_records_max:
            raise WalError(
                f"a batch of {len(records)} records, over the bound of "
                f"{self._options.batch_records_max}"
            )
        payloads = [self._payload(index, record) for index, record in enumerate(records)]
        if not payloads:
            return self._last_seq
        # Nothing is written before every record is known to fit: a refused batch
        # leaves the log exactly as it was.
        try:
            if self._segment_bytes >= self._options.segment_bytes_target:
                self._roll()
            parts: list[bytes] = []
            for index, payload in enumerate(payloads):
                parts += frame(self._last_seq + 1 + index, index, len(payloads), payload)
            written = _write_all(self._fd, parts)
            assert written == sum(len(part) for part in parts)
            _datasync(self._fd)
        except OSError as error:
            self._failed = f"a write or fsync failed ({error})"
            raise WalError(f"{self._path}: {self._failed}; reopen to recover") from error
        self._segment_bytes += written
        self._segment_records += len(payloads)
        self._last_seq += len(payloads)
        return self._last_seq

    def snapshot(self, state: bytes) -> int:
        """Store ``state`` as covering every record appended so far, start a new segment,
        and delete what the kept snapshots make unnecessary.  Returns the covered seq."""
        seq = self._last_seq
        self.write_snapshot(seq, state)
        self.adopt_snapshot(seq)
        return seq

    def write_snapshot(self, seq: int, state: bytes) -> None:
        """Write ``state`` durably as the snapshot covering records 1..``seq``.

        The one call that may run in another thread while ``append`` runs: it touches
        only its own file and the directory, not the open segment or the counters.
        The log does not use the snapshot (for compaction) until ``adopt_snapshot``;
        recovery may use it as soon as this returns, since it covers only durable
        records."""
        self._check_usable()
        if not 0 <= seq <= self._last_seq:
            raise WalError(f"a snapshot at record {seq}, past the last one ({self._last_seq})")
        if len(state) > self._options.snapshot_bytes_max:
            raise WalError(
                f"a snapshot of {len(state)} bytes, over the bound of "
                f"{self._options.snapshot_bytes_max}"
            )
        head = _SNAPSHOT.pack(_SNAPSHOT_MAGIC, seq, len(state), zlib.crc32(state))
        final = self._path / _snapshot_name(seq)
        temporary = final.with_name(final.name + ".tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, [head, _CRC.pack(zlib.crc32(head)), state])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, final)
            _fsync_directory(self._path)
        except OSError as error:
            self._failed = f"writing snapshot {seq} failed ({error})"
            raise WalError(f"{self._path}: {self._failed}; reopen to recover") from error

    def adopt_snapshot(self, seq: int) -> None:
        """Count the snapshot ``write_snapshot`` stored at ``seq`` among the kept ones,
        start a new segment, and delete what the kept snapshots make unnecessary
        (segments whose every record is covered by the oldest kept snapshot: records
        appended after ``seq`` stay)."""
        self._check_usable()
        try:
            if seq not in self._snapshots:
                self._snapshots.append(seq)
            if self._segment_records:
                self._roll()
            self._compact()
        except OSError as error:
            self._failed = f"compacting after snapshot {seq} failed ({error})"
            raise WalError(f"{self._path}: {self._failed}; reopen to recover") from error

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1
        self._failed = self._failed or "closed"

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise WalError(f"{self._path}: the log is unusable: {self._failed}")

    def _payload(self, index: int, record: PersistRecord) -> bytes:
        if not isinstance(record, PERSIST_RECORD_TYPES):
            raise WalError(f"record {index} is a {type(record).__name__}, not a persist record")
        checkpoint = isinstance(record, CheckpointRecord)
        try:
            payload = encode_record(record)
        except WireError as error:
            message = f"record {index} ({type(record).__name__}): {error}"
            if checkpoint and error.reason.startswith("encoding exceeds"):
                raise WalRecordTooLarge(index, message) from error
            raise WalError(message) from error
        if not checkpoint and len(payload) > self._options.record_bytes_max:
            raise WalError(
                f"record {index} ({type(record).__name__}) is {len(payload)} bytes, "
                f"over the bound of {self._options.record_bytes_max}"
            )
        return payload

    def _open_segment(self, first_seq: int, create: bool) -> None:
        assert self._fd < 0
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(
            self._path / _segment_name(first_seq),
            flags | (os.O_CREAT | os.O_EXCL if create else 0),
            0o644,
        )
        if create:
            _fsync_directory(self._path)  # the new name is durable before any record in it
            self._segments.append(first_seq)
            self._segment_bytes = self._segment_records = 0
        assert self._segments[-1] == first_seq

    def _roll(self) -> None:
        os.close(self._fd)
        self._fd = -1
        self._open_segment(self._last_seq + 1, create=True)
        assert self._segment_records == 0

    def _compact(self) -> None:
        """Keep the newest snapshots and the segments needed to replay from the oldest of
        them; while there are fewer than ``snapshots_kept``, keep the whole log."""
        kept = sorted(self._snapshots)[-self._options.snapshots_kept :]
        floor = kept[0] if len(kept) == self._options.snapshots_kept else 0
        doomed = [_snapshot_name(s) for s in _list(self._path).snapshots if s < kept[0]]
        self._snapshots = kept
        while len(self._segments) > 1 and self._segments[1] - 1 <= floor:
            doomed.append(_segment_name(self._segments.pop(0)))
        for name in doomed:
            os.unlink(self._path / name)
        if doomed:
            _fsync_directory(self._path)
        assert self._segments, "the open segment is never deleted"

    def _recover(self) -> tuple[Recovered, RecoveryReport]:
        listing = _list(self._path)
        marker = _read_amnesia(self._path / _AMNESIA_NAME)
        if isinstance(marker, Amnesia):
            self._amnesia = marker
        snapshot, rejected = self._choose_snapshot(listing.snapshots)
        floor = snapshot.seq if snapshot else 0
        self._segments = listing.segments
        replay = self._replay(floor)
        # Only now that no WalCorruption can come: a refused log is left as it was found.
        if isinstance(marker, str):
            self._note_amnesia(f"the amnesia marker is unreadable ({marker})")
        for name in listing.leftovers:
            os.unlink(self._path / name)
        if listing.leftovers:
            _fsync_directory(self._path)
        # The log may end before the snapshot does (records the snapshot covers were
        # lost), or its last segment was set aside: then the next record starts a new
        # segment rather than leave a gap or follow a segment this recovery did not read.
        self._last_seq = max(floor, replay.due - 1)
        last_read = bool(replay.read) and replay.read[-1] == _segment_name(self._segments[-1])
        if last_read and replay.due == self._last_seq + 1:
            self._open_segment(self._segments[-1], create=False)
        else:
            self._open_segment(self._last_seq + 1, create=True)
        recovered = Recovered(
            snapshot=snapshot,
            records=tuple(replay.records),
            first_seq=floor + 1,
            amnesia=self._amnesia,
        )
        assert recovered.last_seq == self._last_seq
        report = RecoveryReport(
            snapshot_seq=snapshot.seq if snapshot else None,
            snapshots_rejected=tuple(rejected),
            segments_read=tuple(replay.read),
            records_replayed=len(replay.records),
            torn_tail=replay.torn,
            removed=tuple(listing.leftovers),
            repaired=tuple(replay.repaired),
            amnesia=self._amnesia,
        )
        return recovered, report

    def _choose_snapshot(self, seqs: list[int]) -> tuple[Snapshot | None, list[str]]:
        """The newest valid snapshot, and why each invalid one was refused (newest first)."""
        chosen: Snapshot | None = None
        rejected: list[str] = []
        for seq in reversed(seqs):
            name = _snapshot_name(seq)
            state = _read_snapshot(self._path / name, seq, self._options.snapshot_bytes_max)
            if not isinstance(state, str) and self._snapshot_problem is not None:
                problem = self._snapshot_problem(state)
                state = state if problem is None else f"state refused: {problem}"
            if isinstance(state, str):
                rejected.append(f"{name}: {state}")
            else:
                self._snapshots.insert(0, seq)
                chosen = chosen or Snapshot(seq=seq, state=state)
        return chosen, rejected

    def _replay(self, floor: int) -> _Replay:
        """Every record after ``floor``, segment by segment, and the sequence number due
        next in the last segment; truncates a torn tail, repairs when asked to."""
        segments = self._segments
        wanted = [
            s
            for i, s in enumerate(segments)
            if i == len(segments) - 1 or segments[i + 1] - 1 > floor
        ]
        replay = _Replay(due=wanted[0] if wanted and wanted[0] <= floor + 1 else floor + 1)
        for position, first in enumerate(wanted):
            name = _segment_name(first)
            if first != replay.due:
                problem = f"records {replay.due}..{first - 1} are missing"
                if not self._repair:
                    raise WalCorruption(name, 0, problem + self._missing_hint(floor))
                self._note_amnesia(f"{name}: {problem}")
                replay.repaired += self._set_aside(wanted[position:], problem)
                break
            data = (self._path / name).read_bytes()
            scan = _scan(data, first)
            replay.read.append(name)
            replay.records += [record for seq, record in scan.records if seq > floor]
            replay.due = first + len(scan.records)
            self._segment_bytes, self._segment_records = scan.end, len(scan.records)
            if scan.damage is not None:
                replay.torn = self._torn_tail(name, first, data, scan, wanted[position + 1 :])
                if position < len(wanted) - 1:  # only when repairing: else it raised
                    replay.repaired += self._set_aside(
                        wanted[position + 1 :], f"follows the damage in {name}"
                    )
                    break
        return replay

    def _missing_hint(self, floor: int) -> str:
        if floor:
            return f" after snapshot {floor}"
        return " and no valid snapshot covers them (compacted after a snapshot now unreadable?)"

    def _torn_tail(
        self, name: str, first: int, data: bytes, scan: _Scan, later: list[int]
    ) -> TornTail:
        """Truncate a torn tail and describe it; damage that is not a tail raises unless
        repairing, when the damaged bytes are set aside instead (the caller sets aside the
        ``later`` segments)."""
        assert scan.damage is not None
        problem = None
        following = _later_batch(data, scan.end, torn_first=first + len(scan.records))
        if later:
            problem = f"{scan.damage}, and later segments follow: acknowledged records are damaged"
        elif following is not None:
            problem = (
                f"{scan.damage}, and record {following} "
                "of a later batch follows: acknowledged records are damaged"
            )
        if problem is not None and not self._repair:
            raise WalCorruption(name, scan.damage_offset, problem)
        if problem is not None or not scan.cut:
            # The marker first: a crash after the truncation must not forget the loss.
            self._note_amnesia(f"{name} at offset {scan.damage_offset}: {problem or scan.damage}")
        if problem is not None:
            aside = f"{name}.damaged-{self._amnesia_ns()}"
            _write_durably(self._path, aside, data[scan.end :])
        fd = os.open(self._path / name, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, scan.end)
            os.fsync(fd)
        finally:
            os.close(fd)
        return TornTail(
            segment=name,
            offset=scan.damage_offset,
            truncated_to=scan.end,
            records_kept=len(scan.records),
            bytes_dropped=len(data) - scan.end,
            reason=scan.damage if problem is None else f"{problem}; bytes set aside",
            cut=scan.cut and problem is None,
        )

    def _set_aside(self, firsts: list[int], why: str) -> list[str]:
        """Rename whole segments out of the log (repair only; the marker is written)."""
        assert self._repair and self._amnesia is not None
        lines = []
        for first in firsts:
            name = _segment_name(first)
            aside = f"{name}.damaged-{self._amnesia_ns()}"
            os.replace(self._path / name, self._path / aside)
            self._segments.remove(first)
            lines.append(f"{name} set aside as {aside}: {why}")
        if firsts:
            _fsync_directory(self._path)
        return lines

    # ---------------------------------------------------------------- amnesia

    @property
    def amnesia(self) -> Amnesia | None:
        return self._amnesia

    def clear_amnesia(self) -> None:
        """The caller made up for what the lost records may have promised."""
        self._check_usable()
        if self._amnesia is None:
            return
        try:
            os.unlink(self._path / _AMNESIA_NAME)
            _fsync_directory(self._path)
        except OSError as error:
            self._failed = f"removing the amnesia marker failed ({error})"
            raise WalError(f"{self._path}: {self._failed}; reopen to recover") from error
        self._amnesia = None

    def _note_amnesia(self, reason: str) -> None:
        """Durably mark that acknowledged records may be lost, before anything changes."""
        if self._amnesia is not None and reason in self._amnesia.reason:
            return
        if self._amnesia is not None:
            reason = f"{self._amnesia.reason}; then {reason}"
        detected = max(time.time_ns(), self._amnesia.detected_ns if self._amnesia else 0)
        amnesia = Amnesia(detected_ns=detected, reason=reason)
        _write_durably(self._path, _AMNESIA_NAME, _encode_amnesia(amnesia))
        self._amnesia = amnesia

    def _amnesia_ns(self) -> int:
        assert self._amnesia is not None
        return self._amnesia.detected_ns


@dataclass(slots=True)
class _Replay:
    due: int  # the sequence number the log continues with
    records: list[PersistRecord] = field(default_factory=list)
    read: list[str] = field(default_factory=list)
    torn: TornTail | None = None
    repaired: list[str] = field(default_factory=list)


def _write_durably(directory: Path, name: str, data: bytes) -> None:
    """Write ``name`` atomically: a temporary file, fsync, rename, fsync of the directory."""
    temporary = directory / f"{name}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, [data])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, directory / name)
    _fsync_directory(directory)


def _encode_amnesia(amnesia: Amnesia) -> bytes:
    reason = amnesia.reason.encode()[-_AMNESIA_REASON_BYTES_MAX:]  # the newest part
    body = _AMNESIA.pack(_AMNESIA_MAGIC, amnesia.detected_ns, len(reason)) + reason
    return body + _CRC.pack(zlib.crc32(body))


def _read_amnesia(path: Path) -> Amnesia | str | None:
    """The marker, None if there is none, or why it cannot be read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _AMNESIA.size + _CRC.size:
        return f"{len(data)} bytes"
    magic, detected, length = _AMNESIA.unpack_from(data)
    if magic != _AMNESIA_MAGIC or length != len(data) - _AMNESIA.size - _CRC.size:
        return "bad magic or length"
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        return "checksum mismatch"
    reason = data[_AMNESIA.size : -_CRC.size].decode("utf-8", "replace")
    return Amnesia(detected_ns=detected, reason=reason)
