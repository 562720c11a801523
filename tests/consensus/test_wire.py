"""The wire codec: every protocol value round-trips byte for byte; hostile bytes give WireError."""

from __future__ import annotations

import dataclasses
import enum
import re
import struct
import typing
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus import effects, messages
from consensus.effects import (
    CheckpointRecord,
    DecidedRecord,
    EntryRecord,
    ModeRecord,
    PersistRecord,
    ProofRecord,
    RegencyRecord,
    TermRecord,
    VoteRecord,
)
from consensus.messages import (
    OPERATIONS,
    RECORD_SIZE,
    Accept,
    AppendAck,
    AppendEntries,
    Block,
    BlockHeader,
    Blocks,
    Certificate,
    CheckpointVote,
    DecidedBlock,
    ElectionProof,
    FallbackMessage,
    FallbackReport,
    FetchBlocks,
    FetchChunk,
    Finality,
    LogEntry,
    PeerMessage,
    Presence,
    Propose,
    RegencyProof,
    Reply,
    Request,
    RequestVote,
    SnapshotChunk,
    StableCheckpoint,
    Stop,
    StopData,
    Sync,
    Vote,
    Write,
    WriteProof,
    WrittenBlock,
)
from consensus.wire import (
    DEPTH_MAX,
    INT_BYTES_MAX,
    TUPLE_ITEMS_MAX,
    TYPE_TAGS,
    WIRE_BYTES_MAX,
    WireError,
    decode,
    decode_as,
    decode_one_of,
    encode,
)
from sim.simulation import SimConfig, Simulation

# ------------------------------------------------------------------ strategies

S = st.SearchStrategy
nats = st.one_of(st.integers(0, 2**64), st.sampled_from([0, 1, 127, 128, 255, 256, 2**63]))
ints = st.integers(-(2**127), 2**127)  # records without validation take any int
digests = st.binary(min_size=32, max_size=32)
signatures = st.binary(max_size=64)


def few(strategy: S[object], most: int = 2) -> S[tuple[object, ...]]:
    return st.lists(strategy, max_size=most).map(tuple)


records = st.integers(1, 2).flatmap(
    lambda n: st.binary(min_size=RECORD_SIZE * n, max_size=RECORD_SIZE * n)
)
requests = st.builds(
    Request,
    client_id=nats,
    request_number=nats,
    transfers=records,
    signature=signatures,
    operation=st.sampled_from(OPERATIONS),
)
headers = st.builds(
    BlockHeader,
    height=nats,
    parent_hash=digests,
    timestamp=nats,
    merkle_root=digests,
    log_size=nats,
    body_hash=digests,
    results_hash=digests,
    state_hash=digests,
    fallback_term=nats,
    verdicts_hash=digests,
)
certificates = st.builds(
    Certificate,
    regency=nats,
    height=nats,
    digest=digests,
    signatures=few(st.tuples(nats, signatures), 3),
)
blocks = st.builds(Block, header=headers, requests=few(requests), verdicts=st.binary(max_size=40))
results = few(st.tuples(nats, nats, st.binary(max_size=8)), 3)
replies = st.one_of(
    st.builds(
        Reply,
        replica_id=nats,
        client_id=nats,
        request_number=nats,
        header=headers,
        certificate=certificates,
        results=results,
        level=st.just(Finality.FINAL),
    ),
    st.builds(
        Reply,
        replica_id=nats,
        client_id=nats,
        request_number=nats,
        header=headers,
        certificate=st.none(),
        results=results,
        level=st.just(Finality.PROVISIONAL),
    ),
)
decided_blocks = st.builds(DecidedBlock, block=blocks, certificate=certificates)


def _vote_kind(cls: type[Write] | type[Accept]) -> S[Write | Accept]:
    return st.builds(
        cls, sender=nats, regency=nats, height=nats, digest=digests, signature=signatures
    )


writes = st.builds(
    Write, sender=nats, regency=nats, height=nats, digest=digests, signature=signatures
)
stops = st.builds(Stop, sender=nats, regency=nats, signature=signatures)
write_proofs = st.builds(WriteProof, regency=nats, height=nats, block=blocks, writes=few(writes))
written_blocks = st.builds(WrittenBlock, regency=nats, block=blocks)
log_entries = st.builds(LogEntry, term=nats, block=blocks, tentative=st.booleans())
fallback_votes = st.builds(
    Vote,
    sender=nats,
    term=nats,
    candidate=nats,
    granted=st.booleans(),
    pre=st.booleans(),
    signature=signatures,
)
elections = st.builds(ElectionProof, term=nats, candidate=nats, votes=few(fallback_votes, 3))
fallback_reports = st.builds(
    FallbackReport, term=nats, election=elections, entries=few(log_entries)
)
stop_data = st.builds(
    StopData,
    sender=nats,
    regency=nats,
    decided_height=nats,
    decided_header=headers,
    decided_certificate=st.none() | certificates,
    proof=st.none() | write_proofs,
    fallback=st.none() | fallback_reports,
    written=st.none() | written_blocks,
    signature=signatures,
)
checkpoint_votes = st.builds(
    CheckpointVote, sender=nats, height=nats, state_hash=digests, signature=signatures
)
stable_checkpoints = st.builds(
    StableCheckpoint,
    height=nats,
    header=headers,
    certificate=certificates,
    snapshot=st.binary(max_size=300),
    votes=few(checkpoint_votes, 3),
)

STRATEGIES: dict[type, S[typing.Any]] = {
    Request: requests,
    Reply: replies,
    BlockHeader: headers,
    Block: blocks,
    Certificate: certificates,
    DecidedBlock: decided_blocks,
    Propose: st.builds(
        Propose, sender=nats, regency=nats, height=nats, block=blocks, signature=signatures
    ),
    Write: _vote_kind(Write),
    Accept: _vote_kind(Accept),
    Stop: stops,
    RegencyProof: st.builds(
        RegencyProof, sender=nats, regency=nats, stops=few(stops, 3), signature=signatures
    ),
    WriteProof: write_proofs,
    StopData: stop_data,
    WrittenBlock: written_blocks,
    Sync: st.builds(
        Sync,
        sender=nats,
        regency=nats,
        height=nats,
        block=blocks,
        stop_data=few(stop_data),
        suffix=st.none() | fallback_reports,
        signature=signatures,
    ),
    CheckpointVote: checkpoint_votes,
    FetchBlocks: st.builds(FetchBlocks, sender=nats, after_height=nats, signature=signatures),
    StableCheckpoint: stable_checkpoints,
    Blocks: st.builds(
        Blocks,
        sender=nats,
        checkpoint=st.none() | stable_checkpoints,
        blocks=few(decided_blocks),
        signature=signatures,
    ),
    FetchChunk: st.builds(
        FetchChunk, sender=nats, checkpoint_height=nats, offset=nats, signature=signatures
    ),
    SnapshotChunk: st.builds(
        SnapshotChunk,
        sender=nats,
        checkpoint=stable_checkpoints,
        total=nats,
        offset=nats,
        data=st.binary(max_size=300),
        signature=signatures,
    ),
    LogEntry: log_entries,
    RequestVote: st.builds(
        RequestVote,
        sender=nats,
        term=nats,
        final_height=nats,
        last_height=nats,
        last_term=nats,
        chain=few(digests, 3),
        pre=st.booleans(),
        signature=signatures,
    ),
    Vote: fallback_votes,
    ElectionProof: elections,
    AppendEntries: st.builds(
        AppendEntries,
        sender=nats,
        term=nats,
        prev_height=nats,
        prev_digest=digests,
        entries=few(log_entries),
        commit_height=nats,
        election=elections,
        signature=signatures,
    ),
    AppendAck: st.builds(
        AppendAck,
        sender=nats,
        term=nats,
        success=st.booleans(),
        match_height=nats,
        signature=signatures,
    ),
    Presence: st.builds(Presence, sender=nats, term=nats, heard=few(nats, 5), signature=signatures),
    FallbackReport: fallback_reports,
    RegencyRecord: st.builds(RegencyRecord, regency=ints, stops=few(stops, 3)),
    VoteRecord: st.builds(
        VoteRecord,
        kind=st.sampled_from(["write", "accept"]) | st.text(),
        regency=ints,
        height=ints,
        digest=st.binary(max_size=40),
        block=st.none() | blocks,
    ),
    ProofRecord: st.builds(ProofRecord, proof=write_proofs),
    DecidedRecord: st.builds(DecidedRecord, decided=decided_blocks),
    CheckpointRecord: st.builds(CheckpointRecord, checkpoint=stable_checkpoints),
    TermRecord: st.builds(TermRecord, term=ints, voted_for=st.none() | ints),
    EntryRecord: st.builds(
        EntryRecord, height=ints, entry=log_entries, election=st.none() | elections
    ),
    ModeRecord: st.builds(
        ModeRecord, mode=st.sampled_from(["bft", "fallback"]) | st.text(), epoch=ints
    ),
    Finality: st.sampled_from(list(Finality)),
}
protocol_values = st.one_of(*STRATEGIES.values())
REGISTERED = sorted(TYPE_TAGS.values(), key=lambda cls: cls.__name__)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ round trips


def _round_trip(value: object) -> bytes:
    data = encode(value)
    back = decode(data)
    assert back == value and type(back) is type(value)
    assert encode(back) == data  # canonical: one value, one encoding
    return data


def test_every_registered_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(TYPE_TAGS.values())


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda cls: cls.__name__)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_of_every_registered_type(cls: type, data: st.DataObject) -> None:
    value = data.draw(STRATEGIES[cls])
    assert type(value) is cls
    encoded = _round_trip(value)
    assert decode_as(encoded, cls) == value


@given(value=STRATEGIES[Propose])
@settings(max_examples=50, deadline=None)
def test_signatures_and_full_bodies_are_kept(value: Propose) -> None:
    back = decode_as(encode(value), Propose)
    assert back.signature == value.signature
    assert back.block.requests == value.block.requests  # not just the header
    assert [r.signature for r in back.block.requests] == [r.signature for r in value.block.requests]


@pytest.fixture(scope="module")
def corpus() -> list[object]:
    """Every message sent and record persisted in a simulated run with a regency change,
    a fallback episode and a crashed fallback leader: real, signed protocol values.
    Snapshots go in chunks of 512 bytes, so the catch-up sends them chunked."""
    sim = Simulation(SimConfig(seed=3, scenario="fallback-leader-crash", snapshot_chunk_bytes=512))
    sent: list[object] = []
    send = sim.network.send

    def recording_send(now: int, source: str, target: str, payload: typing.Any) -> None:
        sent.append(payload)
        send(now, source, target, payload)

    sim.network.send = recording_send  # type: ignore[method-assign]
    assert sim.run().ok
    return sent + [record for disk in sim.disks.values() for record in disk]


def test_every_value_of_a_simulated_run_round_trips(corpus: list[object]) -> None:
    kinds = {type(value) for value in corpus}
    wanted = {
        *typing.get_args(PeerMessage),
        *typing.get_args(FallbackMessage),
        *typing.get_args(PersistRecord),
        Request,
        Reply,
    }
    assert wanted <= kinds, f"the run no longer shows {wanted - kinds}"
    for value in corpus:
        _round_trip(value)
    assert any(isinstance(v, StopData) and v.fallback for v in corpus)
    assert any(isinstance(v, Sync) and v.suffix for v in corpus)
    assert any(isinstance(v, StopData) and v.written for v in corpus)
    assert any(isinstance(v, VoteRecord) and v.block for v in corpus)


def _depth(value: object) -> int:
    if type(value) is tuple:
        return 1 + max((_depth(item) for item in value), default=0)
    if dataclasses.is_dataclass(value):
        return 1 + max(_depth(getattr(value, f.name)) for f in dataclasses.fields(value))
    return 0


def test_real_values_nest_well_inside_the_depth_bound(corpus: list[object]) -> None:
    assert max(_depth(v) for v in corpus) <= DEPTH_MAX // 2


def test_a_block_of_64_full_requests_fits() -> None:
    full = bytes(RECORD_SIZE * 8189)  # ledger.BATCH_EVENTS_MAX records
    request = Request(client_id=1, request_number=1, transfers=full, signature=bytes(64))
    requests = tuple(dataclasses.replace(request, client_id=c) for c in range(64))
    header = BlockHeader(
        height=1,
        parent_hash=bytes(32),
        timestamp=0,
        merkle_root=bytes(32),
        log_size=64 * 8189,
        body_hash=bytes(32),
        results_hash=bytes(32),
        state_hash=bytes(32),
    )
    certificate = Certificate(
        regency=0, height=1, digest=bytes(32), signatures=tuple((i, bytes(64)) for i in range(7))
    )
    record = DecidedRecord(
        decided=DecidedBlock(block=Block(header=header, requests=requests), certificate=certificate)
    )
    data = encode(record)
    assert len(data) <= WIRE_BYTES_MAX
    assert decode(data) == record


# ------------------------------------------------------------------ the registry


NOT_ON_THE_WIRE = {
    "_Vote": "the base of Write and Accept, never a message itself",
    "Persisted": "the driver's word to its own core; never leaves the process",
    "Send": "an effect: the driver sends its message, not the Send",
    "Effects": "what a step returns to its driver, inside one process",
    "EffectsBuilder": "a core's scratch list of effects",
}


def _protocol_types() -> list[type]:
    found = []
    for module in (messages, effects):
        for name, obj in sorted(vars(module).items()):
            if not isinstance(obj, type) or obj.__module__ != module.__name__:
                continue
            value_type = dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)
            if value_type and name not in NOT_ON_THE_WIRE:
                found.append(obj)
    return found


def test_every_protocol_dataclass_and_enum_is_registered() -> None:
    registered = set(TYPE_TAGS.values())
    missing = [cls.__name__ for cls in _protocol_types() if cls not in registered]
    assert not missing, f"give these a tag in consensus.wire.TYPE_TAGS: {missing}"
    assert registered == set(_protocol_types())  # nothing private or internal sneaks on
    for alias in (PeerMessage, FallbackMessage, PersistRecord):
        assert set(typing.get_args(alias)) <= registered


def test_tags_are_stable() -> None:
    """A tag is forever: a stored log or a peer on the old version depends on it."""
    assert {tag: cls.__name__ for tag, cls in TYPE_TAGS.items()} == {
        1: "Request",
        2: "Reply",
        3: "BlockHeader",
        4: "Block",
        5: "Certificate",
        6: "DecidedBlock",
        16: "Propose",
        17: "Write",
        18: "Accept",
        19: "Stop",
        20: "RegencyProof",
        21: "WriteProof",
        22: "StopData",
        23: "Sync",
        24: "CheckpointVote",
        25: "FetchBlocks",
        26: "StableCheckpoint",
        27: "Blocks",
        28: "WrittenBlock",
        29: "FetchChunk",
        30: "SnapshotChunk",
        40: "LogEntry",
        41: "RequestVote",
        42: "Vote",
        43: "ElectionProof",
        44: "AppendEntries",
        45: "AppendAck",
        46: "Presence",
        47: "FallbackReport",
        64: "RegencyRecord",
        65: "VoteRecord",
        66: "ProofRecord",
        67: "DecidedRecord",
        68: "CheckpointRecord",
        69: "TermRecord",
        70: "EntryRecord",
        71: "ModeRecord",
        96: "Finality",
    }


def test_decode_as_refuses_other_types_at_the_first_byte() -> None:
    write = Write(sender=1, regency=0, height=3, digest=bytes(32))
    data = encode(write)
    assert decode_as(data, Write) == write
    with pytest.raises(WireError, match="expected Accept, got Write"):
        decode_as(data, Accept)
    with pytest.raises(WireError, match="not a registered protocol type"):
        decode_as(data, dict)
    records = typing.get_args(PersistRecord)
    with pytest.raises(WireError, match="expected RegencyRecord"):
        decode_one_of(data, records)
    vote = VoteRecord(kind="write", regency=0, height=3, digest=bytes(32))
    assert decode_one_of(encode(vote), records) == vote


# ------------------------------------------------------------------ refusing to encode


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            VoteRecord(kind=None, regency=0, height=1, digest=b""),  # type: ignore[arg-type]
            "kind: expected str, got NoneType",
        ),
        (Presence(sender=0, term=1, heard=(True,)), "heard[0]: expected int, got bool"),
        (TermRecord(term=1, voted_for=Finality.FINAL), "voted_for: expected int | None"),
        ({"a": 1}, "cannot encode dict"),
        (2**135, f"over the bound of {INT_BYTES_MAX}"),
        ((None,) * (TUPLE_ITEMS_MAX + 1), "over the bound"),
        ("\ud800", "not encodable as UTF-8"),
    ],
    ids=[
        "wrong-field-type",
        "bool-for-int",
        "enum-for-int",
        "dict",
        "huge-int",
        "long-tuple",
        "surrogate",
    ],
)
def test_encode_refuses_what_decode_would_refuse(value: object, problem: str) -> None:
    with pytest.raises(WireError, match=re.escape(problem)):
        encode(value)


def test_bounds_hold_exactly_at_the_bound() -> None:
    assert decode(encode(2**135 - 1)) == 2**135 - 1
    assert decode(encode(-(2**135) + 1)) == -(2**135) + 1
    assert decode(encode((None,) * TUPLE_ITEMS_MAX)) == (None,) * TUPLE_ITEMS_MAX
    assert decode(encode(_nested(DEPTH_MAX))) == _nested(DEPTH_MAX)
    with pytest.raises(WireError, match="nesting deeper"):
        encode(_nested(DEPTH_MAX + 1))
    with pytest.raises(WireError, match=f"exceeds {WIRE_BYTES_MAX}"):
        encode(bytes(WIRE_BYTES_MAX))
    assert len(encode(bytes(WIRE_BYTES_MAX - 6))) == WIRE_BYTES_MAX


def _nested(levels: int) -> object:
    value: object = None
    for _ in range(levels):
        value = (value,)
    return value


# ------------------------------------------------------------------ hostile bytes


def _decodes_or_refuses(data: bytes) -> None:
    """The contract on untrusted bytes: a value whose encoding is exactly ``data``, or
    WireError; any other exception fails the test."""
    try:
        value = decode(data)
    except WireError as error:
        assert str(error)
        return
    assert encode(value) == data


@pytest.fixture(scope="module")
def small_real_values(corpus: list[object]) -> list[object]:
    """The smallest value of each type in the simulated run."""
    smallest: dict[type, tuple[int, object]] = {}
    for value in corpus:
        size = len(encode(value))
        if type(value) not in smallest or size < smallest[type(value)][0]:
            smallest[type(value)] = (size, value)
    return [value for _, value in smallest.values()]


def test_every_truncation_of_real_values_is_refused(small_real_values: list[object]) -> None:
    for value in small_real_values:
        data = encode(value)
        cuts: set[int] | range = range(len(data))
        if len(data) > 4096:  # a 20 kB SYNC: every cut near either end, every 29th between
            cuts = {*range(1024), *range(0, len(data), 29), *range(len(data) - 1024, len(data))}
        for cut in cuts:
            with pytest.raises(WireError):
                decode(data[:cut])
        with pytest.raises(WireError, match="trailing bytes"):
            decode(data + b"\x00")


@FUZZ
@given(value=protocol_values, cut=st.floats(0, 1, exclude_max=True))
def test_any_truncation_is_refused(value: object, cut: float) -> None:
    data = encode(value)
    with pytest.raises(WireError):
        decode(data[: int(cut * len(data))])


@FUZZ
@given(
    value=protocol_values,
    flips=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4
    ),
)
def test_byte_flips_are_refused_or_decode_canonically(
    value: object, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(encode(value))
    for where, mask in flips:
        data[int(where * len(data))] ^= mask
    _decodes_or_refuses(bytes(data))


@FUZZ
@given(
    value=protocol_values,
    at=st.floats(0, 1),
    junk=st.binary(min_size=1, max_size=9),
    drop=st.integers(0, 9),
)
def test_splices_are_refused_or_decode_canonically(
    value: object, at: float, junk: bytes, drop: int
) -> None:
    data = encode(value)
    where = int(at * len(data))
    _decodes_or_refuses(data[:where] + junk + data[where + drop :])


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_are_refused_or_decode_canonically(data: bytes) -> None:
    _decodes_or_refuses(b"\x01" + data)
    _decodes_or_refuses(data)


# Token streams drawn from the format's own vocabulary reach deeper than random bytes.
_tokens = st.one_of(
    st.sampled_from(
        [
            b"\x00",
            b"\x01",
            b"\x02",
            b"\x03\x01\x05",
            b"\x03\x02\x00\x80",
            b"\x04\x00\x00\x00\x20" + bytes(32),
            b"\x05\x00\x00\x00\x01a",
            b"\x06\x00\x00\x00\x02",
            b"\x08\x00\x60\x01\x02",
        ]
    ),
    st.builds(
        lambda tag, count: struct.pack(">BHB", 7, tag, count),
        st.sampled_from(sorted(TYPE_TAGS)) | st.integers(0, 2**16 - 1),
        st.integers(0, 9),
    ),
)


@FUZZ
@given(tokens=st.lists(_tokens, max_size=40))
def test_token_soup_is_refused_or_decodes_canonically(tokens: list[bytes]) -> None:
    _decodes_or_refuses(b"\x01" + b"".join(tokens))


HOSTILE: list[tuple[bytes, str]] = [
    (b"", "empty input"),
    (b"\x02\x00", "unknown wire version 2"),
    (b"\x01\x09", "unknown kind 9 at offset 1"),
    (b"\x01\xff", "unknown kind 255"),
    (b"\x01\x04\xff\xff\xff\xff", "over the bound"),
    (b"\x01\x04\x00\x00\x10\x00abc", "truncated at offset 6: a bytes of 4096 bytes needs"),
    (b"\x01\x05\x00\x00\x00\x01\xff", "invalid UTF-8"),
    (b"\x01\x06\xff\xff\xff\xff", "over 4096"),
    (b"\x01\x06\x00\x00\x0f\xff\x00", "truncated"),
    (b"\x01\x03\x00", "int length 0"),
    (b"\x01\x03\xff" + bytes(255), "int length 255"),
    (b"\x01\x03\x02\x00\x05", "not minimally encoded"),
    (b"\x01\x07\x03\xe7\x00", "unknown dataclass tag 999"),
    (b"\x01\x07\x00\x60\x00", "unknown dataclass tag 96"),  # Finality is an enum
    (b"\x01\x08\x00\x11\x01\x01", "unknown enum tag 17"),  # Write is a dataclass
    (b"\x01\x08\x00\x60\x01\x07", "7 is no Finality"),
    (b"\x01\x07\x00\x13\x09", "Stop has 3 fields, got 9"),
    (b"\x01\x07\x00\x13\x03\x04", "Stop.sender: expected int, got bytes at offset 5"),
    (b"\x01\x07\x00\x13\x03\x03\x01\x01\x03\x01\x02", "Stop.signature: truncated at offset 11"),
    (
        b"\x01\x07\x00\x13\x03\x03\x01\xff\x03\x01\x02\x04\x00\x00\x00\x00",
        "invalid Stop at offset 1: sender must be a non-negative int",
    ),
    (b"\x01\x00\x00", "1 trailing bytes at offset 2"),
    (b"\x01" + b"\x06\x00\x00\x00\x01" * 100_000 + b"\x00", f"nesting deeper than {DEPTH_MAX}"),
]


@pytest.mark.parametrize(("data", "problem"), HOSTILE, ids=[p for _, p in HOSTILE])
def test_hostile_bytes_name_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        decode(data)


def _patched(value: object, find: bytes, replace: bytes) -> bytes:
    data = encode(value)
    assert data.count(find) == 1
    return data.replace(find, replace)


REPLACE: list[tuple[Callable[[], bytes], str]] = [
    # A 31-byte digest: the message's own validation refuses it.
    (
        lambda: _patched(
            Write(sender=1, regency=0, height=3, digest=b"\x07" * 32),
            b"\x04\x00\x00\x00\x20" + b"\x07" * 32,
            b"\x04\x00\x00\x00\x1f" + b"\x07" * 31,
        ),
        "invalid Write at offset 1: digest must be 32 bytes",
    ),
    # A Stop where RegencyRecord.stops wants Stops.
    (
        lambda: _patched(
            RegencyRecord(regency=5, stops=(Stop(sender=1, regency=5),)),
            b"\x07\x00\x13",
            b"\x07\x00\x12",
        ),
        "RegencyRecord.stops\\[0\\]: expected Stop, got Accept",
    ),
    # Reply.level is a Finality, never a bare int.
    (
        lambda: _patched(
            Reply(
                replica_id=0,
                client_id=0,
                request_number=1,
                header=_header(),
                certificate=None,
                results=(),
                level=Finality.PROVISIONAL,
            ),
            b"\x08\x00\x60\x01\x01",
            b"\x03\x01\x01",
        ),
        "Reply.level: expected Finality, got int",
    ),
]


def _header() -> BlockHeader:
    return BlockHeader(
        height=1,
        parent_hash=bytes(32),
        timestamp=0,
        merkle_root=bytes(32),
        log_size=0,
        body_hash=bytes(32),
        results_hash=bytes(32),
        state_hash=bytes(32),
    )


@pytest.mark.parametrize(("make", "problem"), REPLACE, ids=["digest", "wrong-class", "enum"])
def test_wrong_nested_values_are_refused_with_their_path(
    make: Callable[[], bytes], problem: str
) -> None:
    with pytest.raises(WireError, match=problem):
        decode(make())


def test_oversized_input_is_refused_before_reading_it() -> None:
    with pytest.raises(WireError, match="over the bound"):
        decode(b"\x01" + bytes(WIRE_BYTES_MAX))
    with pytest.raises(WireError, match="expected bytes"):
        decode(bytearray(b"\x01\x00"))  # type: ignore[arg-type]
