"""The bytes of protocol values on the wire and on disk: a total, bounded codec.

Guarantees:

* ``decode(encode(value)) == value`` for every protocol value (the messages of
  ``consensus.messages`` and the ``PersistRecord`` types of ``consensus.effects``),
  signatures and full block bodies included.  ``consensus.encoding.canonical``
  stays the input to hashes and signatures; this codec is for moving and storing.
* The encoding is canonical: ``decode`` accepts exactly the byte strings
  ``encode`` produces, so ``encode(decode(data)) == data`` whenever ``decode``
  succeeds.  No value has two encodings (fixed-width lengths, minimal ints).
* ``decode`` is total on untrusted bytes: it returns a value or raises
  ``WireError`` naming the problem, where it sits (field path, byte offset) and
  nothing else.  Its work is linear in the input and bounded: at most
  ``WIRE_BYTES_MAX`` bytes (a larger ``bytes_max`` only for what the process
  stored itself: the WAL's checkpoints), ``DEPTH_MAX`` levels of nesting, ``TUPLE_ITEMS_MAX``
  items per tuple, ``INT_BYTES_MAX`` bytes per int.
* Only registered types are ever built, looked up by a fixed small integer tag
  (``TYPE_TAGS``), never by a name taken from the bytes.  A field accepts only
  the types its annotation names, checked while decoding; then the dataclass's
  own validation runs, and its ``MessageError`` becomes a ``WireError``.
* ``encode`` refuses with ``WireError`` every value ``decode`` would refuse
  (a wrong field type, an unregistered class, a bound exceeded), so bytes it
  returns always decode: the write-ahead log relies on that.

Format, version 1: a version byte, then one value.  A value is a kind byte and
a body: 0 None, 1 False, 2 True; 3 int: u8 length (1..INT_BYTES_MAX) and that
many bytes of big-endian two's complement, of exactly ``(bit_length + 8) // 8``
bytes as in ``canonical``; 4 bytes and 5 str (UTF-8): u32 length and the raw
bytes; 6 tuple: u32 count and the items; 7 dataclass: u16 type tag, u8 field
count, the fields in declaration order; 8 enum: u16 type tag and an int body.
Lengths and tags are big-endian.
"""

from __future__ import annotations

import dataclasses
import struct
import types
import typing
from collections.abc import Mapping
from enum import IntEnum
from typing import Final, TypeVar, cast

from consensus.effects import (
    CheckpointRecord,
    DecidedRecord,
    EntryRecord,
    ModeRecord,
    ProofRecord,
    RegencyRecord,
    TermRecord,
    VoteRecord,
)
from consensus.messages import (
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
    FallbackReport,
    FetchBlocks,
    FetchChunk,
    Finality,
    LogEntry,
    MessageError,
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

WIRE_VERSION: Final = 1
WIRE_BYTES_MAX: Final = 64 * 1024 * 1024  # one encoded value, version byte included
DEPTH_MAX: Final = 32  # real values nest about 10 deep (Sync > StopData > WriteProof > ...)
TUPLE_ITEMS_MAX: Final = 4096  # the largest protocol tuple holds 1024 signers
INT_BYTES_MAX: Final = 17  # a u128 (ledger ids) needs 17 bytes of two's complement

# Stable type tags.  A tag is forever: never reuse or renumber one, only add.
TYPE_TAGS: Final[Mapping[int, type]] = types.MappingProxyType(
    {
        # client requests, answers and blocks
        1: Request,
        2: Reply,
        3: BlockHeader,
        4: Block,
        5: Certificate,
        6: DecidedBlock,
        # BFT replica to replica
        16: Propose,
        17: Write,
        18: Accept,
        19: Stop,
        20: RegencyProof,
        21: WriteProof,
        22: StopData,
        23: Sync,
        24: CheckpointVote,
        25: FetchBlocks,
        26: StableCheckpoint,
        27: Blocks,
        28: WrittenBlock,
        29: FetchChunk,
        30: SnapshotChunk,
        # fallback (Raft) mode
        40: LogEntry,
        41: RequestVote,
        42: Vote,
        43: ElectionProof,
        44: AppendEntries,
        45: AppendAck,
        46: Presence,
        47: FallbackReport,
        # persist records (the write-ahead log)
        64: RegencyRecord,
        65: VoteRecord,
        66: ProofRecord,
        67: DecidedRecord,
        68: CheckpointRecord,
        69: TermRecord,
        70: EntryRecord,
        71: ModeRecord,
        # enums
        96: Finality,
    }
)

_TAG_OF: dict[type, int] = {cls: tag for tag, cls in TYPE_TAGS.items()}
assert len(_TAG_OF) == len(TYPE_TAGS), "a class registered under two tags"
assert all(0 < tag < 1 << 16 for tag in TYPE_TAGS)


_NONE, _FALSE, _TRUE, _INT, _BYTES, _STR, _TUPLE, _DATACLASS, _ENUM = range(9)
_KIND_NAMES = ("None", "False", "True", "int", "bytes", "str", "tuple", "dataclass", "enum")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_CLASS_HEAD = struct.Struct(">BHB")  # kind, type tag, field count
_ENUM_HEAD = struct.Struct(">BH")  # kind, type tag

T = TypeVar("T")


class WireError(ValueError):
    """Bytes that are not the encoding of a protocol value, or a value that has none.

    ``path`` locates the problem inside the value (``block.requests[2].transfers``).
    """

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(f"{path.lstrip('.')}: {reason}" if path else reason)
        self.reason = reason
        self.path = path

    def within(self, step: str) -> WireError:
        return WireError(self.reason, step + self.path)


# ------------------------------------------------------------------ schemas


@dataclasses.dataclass(frozen=True, slots=True)
class _Schema:
    """What one position accepts, compiled once from a field's annotation."""

    name: str
    kinds: frozenset[int]
    classes: frozenset[type] | None = None  # None: any registered class
    items: _Schema | None = None  # tuple[X, ...]; with ``fixed`` None too: anything
    fixed: tuple[_Schema, ...] | None = None  # tuple[A, B, C]


_ANY = _Schema(name="a protocol value", kinds=frozenset(range(9)))
_LEAVES: dict[object, _Schema] = {
    type(None): _Schema(name="None", kinds=frozenset({_NONE})),
    bool: _Schema(name="bool", kinds=frozenset({_FALSE, _TRUE})),
    int: _Schema(name="int", kinds=frozenset({_INT})),
    bytes: _Schema(name="bytes", kinds=frozenset({_BYTES})),
    str: _Schema(name="str", kinds=frozenset({_STR})),
}


def _union(alternatives: list[_Schema]) -> _Schema:
    classes: set[type] = set()
    for alternative in alternatives:
        assert alternative.classes is not None or not alternative.kinds & {_DATACLASS, _ENUM}
        classes |= alternative.classes or set()
    tuples = [a for a in alternatives if _TUPLE in a.kinds]
    assert len(tuples) <= 1, "a union of two tuple shapes cannot be told apart"
    return _Schema(
        name=" | ".join(a.name for a in alternatives),
        kinds=frozenset().union(*(a.kinds for a in alternatives)),
        classes=frozenset(classes),
        items=tuples[0].items if tuples else None,
        fixed=tuples[0].fixed if tuples else None,
    )


def _compile(annotation: object) -> _Schema:
    """The schema of an annotation; only shapes protocol values use are supported."""
    if annotation in _LEAVES:
        return _LEAVES[annotation]
    if isinstance(annotation, type) and annotation in _TAG_OF:
        kind = _ENUM if issubclass(annotation, IntEnum) else _DATACLASS
        return _Schema(name=annotation.__name__, kinds=frozenset({kind}),
                       classes=frozenset({annotation}))  # fmt: skip
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        return _union([_compile(a) for a in arguments])
    if origin is tuple and len(arguments) == 2 and arguments[1] is Ellipsis:
        items = _compile(arguments[0])
        return _Schema(name=f"tuple[{items.name}, ...]", kinds=frozenset({_TUPLE}), items=items)
    if origin is tuple and arguments and Ellipsis not in arguments:
        fixed = tuple(_compile(a) for a in arguments)
        names = ", ".join(f.name for f in fixed)
        return _Schema(name=f"tuple[{names}]", kinds=frozenset({_TUPLE}), fixed=fixed)
    raise AssertionError(f"no wire schema for annotation {annotation!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class _Layout:
    cls: type
    tag: int
    head: bytes  # kind, tag, field count: what every encoding of ``cls`` starts with
    fields: tuple[tuple[str, _Schema], ...]


def _layout(cls: type, tag: int) -> _Layout:
    if issubclass(cls, IntEnum):
        return _Layout(cls=cls, tag=tag, head=_ENUM_HEAD.pack(_ENUM, tag), fields=())
    assert dataclasses.is_dataclass(cls), f"{cls.__name__} is neither a dataclass nor an IntEnum"
    hints = typing.get_type_hints(cls)
    fields = tuple((f.name, _compile(hints[f.name])) for f in dataclasses.fields(cls))
    assert all(f.init for f in dataclasses.fields(cls)), "every field is set by the constructor"
    assert len(fields) < 256
    return _Layout(cls=cls, tag=tag, head=_CLASS_HEAD.pack(_DATACLASS, tag, len(fields)),
                   fields=fields)  # fmt: skip


_LAYOUTS: dict[type, _Layout] = {cls: _layout(cls, tag) for tag, cls in TYPE_TAGS.items()}
_LAYOUT_OF_TAG: dict[int, _Layout] = {layout.tag: layout for layout in _LAYOUTS.values()}
_SCHEMAS_OF: dict[tuple[type, ...], _Schema] = {}


_SCHEMAS_OF_MAX = 64  # callers ask for a handful of fixed unions


def _schema_of(classes: tuple[type, ...]) -> _Schema:
    known = _SCHEMAS_OF.get(classes)
    if known is None:
        for cls in classes:
            if cls not in _TAG_OF:
                name = getattr(cls, "__name__", repr(cls))
                raise WireError(f"{name} is not a registered protocol type")
        if len(_SCHEMAS_OF) >= _SCHEMAS_OF_MAX:
            _SCHEMAS_OF.clear()
        known = _SCHEMAS_OF[classes] = _union([_compile(cls) for cls in classes])
    return known


# ------------------------------------------------------------------ encoding


def encode(value: object, *, bytes_max: int | None = None) -> bytes:
    """The bytes of ``value``; ``WireError`` if it has none (see the module docstring).

    ``bytes_max`` (default ``WIRE_BYTES_MAX``) is for local storage only: the
    write-ahead log keeps a checkpoint, whose snapshot grows with the ledger,
    under a larger bound of its own.  Everything sent keeps the default."""
    bound = WIRE_BYTES_MAX if bytes_max is None else bytes_max
    assert 0 < bound < 1 << 32, bound  # lengths are u32
    parts: list[bytes] = [bytes((WIRE_VERSION,))]
    size = _encode(value, _ANY, parts, 0, 1, bound)
    assert size == sum(len(p) for p in parts)
    return b"".join(parts)


def _kind_of(value: object) -> int:
    cls = type(value)
    if value is None:
        return _NONE
    if cls is bool:
        return _TRUE if value else _FALSE
    if cls is int:
        return _INT
    if cls is bytes:
        return _BYTES
    if cls is str:
        return _STR
    if cls is tuple:
        return _TUPLE
    layout = _LAYOUTS.get(cls)
    if layout is None:
        raise WireError(f"cannot encode {cls.__name__}: not a registered protocol type")
    return _ENUM if layout.head[0] == _ENUM else _DATACLASS


def _encode(
    value: object, schema: _Schema, parts: list[bytes], depth: int, size: int, bytes_max: int
) -> int:
    """Append ``value``'s encoding to ``parts``; return the encoded size so far."""
    kind = _kind_of(value)
    if kind not in schema.kinds or (
        kind >= _DATACLASS and schema.classes is not None and type(value) not in schema.classes
    ):
        raise WireError(f"expected {schema.name}, got {type(value).__name__}")
    if kind <= _TRUE:
        parts.append(bytes((kind,)))
        return size + 1
    if kind in (_INT, _ENUM):
        raw = _int_bytes(int(cast(int, value)))
        head = _LAYOUTS[type(value)].head if kind == _ENUM else bytes((_INT,))
        parts += (head, bytes((len(raw),)), raw)
        return size + len(head) + 1 + len(raw)
    if kind in (_BYTES, _STR):
        raw = cast(bytes, value) if kind == _BYTES else _utf8(cast(str, value))
        size += 5 + len(raw)
        if size > bytes_max:
            raise WireError(f"encoding exceeds {bytes_max} bytes")
        parts += (bytes((kind,)) + _U32.pack(len(raw)), raw)
        return size
    if depth >= DEPTH_MAX:
        raise WireError(f"nesting deeper than {DEPTH_MAX}")
    if kind == _TUPLE:
        items = cast(tuple[object, ...], value)
        return _encode_tuple(items, schema, parts, depth, size, bytes_max)
    layout = _LAYOUTS[type(value)]
    parts.append(layout.head)
    size += len(layout.head)
    for name, field_schema in layout.fields:
        try:
            size = _encode(getattr(value, name), field_schema, parts, depth + 1, size, bytes_max)
        except WireError as error:
            raise error.within(f".{name}") from None
    return size


def _encode_tuple(
    value: tuple[object, ...],
    schema: _Schema,
    parts: list[bytes],
    depth: int,
    size: int,
    bytes_max: int,
) -> int:
    if len(value) > TUPLE_ITEMS_MAX:
        raise WireError(f"tuple of {len(value)} items, over the bound of {TUPLE_ITEMS_MAX}")
    if schema.fixed is not None and len(value) != len(schema.fixed):
        raise WireError(f"expected {schema.name}, got a tuple of {len(value)} items")
    parts.append(bytes((_TUPLE,)) + _U32.pack(len(value)))
    size += 5
    for index, item in enumerate(value):
        item_schema = schema.fixed[index] if schema.fixed is not None else schema.items or _ANY
        try:
            size = _encode(item, item_schema, parts, depth + 1, size, bytes_max)
        except WireError as error:
            raise error.within(f"[{index}]") from None
    return size


def _int_bytes(value: int) -> bytes:
    length = (value.bit_length() + 8) // 8  # as in canonical: room for the sign bit
    if length > INT_BYTES_MAX:
        raise WireError(f"int of {length} bytes, over the bound of {INT_BYTES_MAX}")
    return value.to_bytes(length, "big", signed=True)


def _utf8(value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate has no UTF-8 form
        raise WireError(f"str is not encodable as UTF-8: {error.reason}") from None


# ------------------------------------------------------------------ decoding


def decode(data: bytes) -> object:
    """The value ``data`` encodes; ``WireError`` for anything else."""
    return _decode_top(data, _ANY, None)


def decode_as(data: bytes, cls: type[T]) -> T:
    """Like ``decode``, but the value must be a ``cls``; anything else is a ``WireError``
    raised at its first byte, before the rest is decoded."""
    return cast(T, _decode_top(data, _schema_of((cls,)), None))


def decode_one_of(
    data: bytes, classes: tuple[type, ...], *, bytes_max: int | None = None
) -> object:
    """Like ``decode_as`` for a value of one of ``classes`` (a union such as PersistRecord).
    ``bytes_max`` as in ``encode``: larger only for what this process stored itself."""
    return _decode_top(data, _schema_of(classes), bytes_max)


def _decode_top(data: bytes, schema: _Schema, bytes_max: int | None) -> object:
    bound = WIRE_BYTES_MAX if bytes_max is None else bytes_max
    if type(data) is not bytes:
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if len(data) > bound:
        raise WireError(f"{len(data)} bytes, over the bound of {bound}")
    if not data:
        raise WireError("empty input")
    if data[0] != WIRE_VERSION:
        raise WireError(f"unknown wire version {data[0]}")
    try:
        value, end = _decode(data, 1, schema, 0)
    except WireError as error:
        raise error.within(_root_name(data)) from None
    if end != len(data):
        raise WireError(f"{len(data) - end} trailing bytes at offset {end}")
    return value


def _root_name(data: bytes) -> str:
    """The top-level type's name, to start error paths with (``Propose.block...``)."""
    if len(data) >= 4 and data[1] == _DATACLASS:
        layout = _LAYOUT_OF_TAG.get(_U16.unpack_from(data, 2)[0])
        if layout is not None:
            return layout.cls.__name__
    return ""


def _need(data: bytes, offset: int, count: int, what: str) -> None:
    if count > len(data) - offset:
        have = len(data) - offset
        raise WireError(f"truncated at offset {offset}: {what} needs {count} bytes, {have} left")


def _decode(data: bytes, offset: int, schema: _Schema, depth: int) -> tuple[object, int]:
    """The value at ``offset`` and the offset after it."""
    _need(data, offset, 1, "a kind byte")
    kind = data[offset]
    if kind > _ENUM:
        raise WireError(f"unknown kind {kind} at offset {offset}")
    if kind not in schema.kinds:
        raise WireError(f"expected {schema.name}, got {_KIND_NAMES[kind]} at offset {offset}")
    if kind <= _TRUE:
        return (None, False, True)[kind], offset + 1
    if kind == _INT:
        return _decode_int(data, offset + 1)
    if kind in (_BYTES, _STR):
        _need(data, offset + 1, 4, "a length")
        (length,) = _U32.unpack_from(data, offset + 1)
        start = offset + 5
        # len(data) exceeds WIRE_BYTES_MAX only under a caller's larger bound (the WAL's)
        if length > max(WIRE_BYTES_MAX, len(data)):
            raise WireError(f"length {length} at offset {offset + 1} is over the bound")
        _need(data, start, length, f"a {_KIND_NAMES[kind]} of {length} bytes")
        raw = data[start : start + length]  # one slice, never byte by byte
        if kind == _BYTES:
            return raw, start + length
        try:
            return raw.decode("utf-8"), start + length
        except UnicodeDecodeError as error:
            raise WireError(
                f"invalid UTF-8 in the str at offset {offset}: {error.reason}"
            ) from None
    if depth >= DEPTH_MAX:
        raise WireError(f"nesting deeper than {DEPTH_MAX} at offset {offset}")
    if kind == _TUPLE:
        return _decode_tuple(data, offset, schema, depth)
    return _decode_registered(data, offset, kind, schema, depth)


def _decode_int(data: bytes, offset: int) -> tuple[int, int]:
    _need(data, offset, 1, "an int length")
    length = data[offset]
    if not 1 <= length <= INT_BYTES_MAX:
        raise WireError(f"int length {length} at offset {offset} is not in 1..{INT_BYTES_MAX}")
    _need(data, offset + 1, length, "an int")
    value = int.from_bytes(data[offset + 1 : offset + 1 + length], "big", signed=True)
    if (value.bit_length() + 8) // 8 != length:
        raise WireError(f"int at offset {offset} is not minimally encoded")
    return value, offset + 1 + length


def _decode_tuple(data: bytes, offset: int, schema: _Schema, depth: int) -> tuple[object, int]:
    _need(data, offset + 1, 4, "a tuple count")
    (count,) = _U32.unpack_from(data, offset + 1)
    if count > TUPLE_ITEMS_MAX:
        raise WireError(f"tuple of {count} items at offset {offset}, over {TUPLE_ITEMS_MAX}")
    if schema.fixed is not None and count != len(schema.fixed):
        raise WireError(f"expected {schema.name}, got a tuple of {count} items at offset {offset}")
    position = offset + 5
    _need(data, position, count, f"a tuple of {count} items")  # each item takes a byte or more
    items: list[object] = []
    for index in range(count):
        item_schema = schema.fixed[index] if schema.fixed is not None else schema.items or _ANY
        try:
            item, position = _decode(data, position, item_schema, depth + 1)
        except WireError as error:
            raise error.within(f"[{index}]") from None
        items.append(item)
    return tuple(items), position


def _decode_registered(
    data: bytes, offset: int, kind: int, schema: _Schema, depth: int
) -> tuple[object, int]:
    _need(data, offset + 1, 2, "a type tag")
    (tag,) = _U16.unpack_from(data, offset + 1)
    layout = _LAYOUT_OF_TAG.get(tag)
    if layout is None or layout.head[0] != kind:
        raise WireError(f"unknown {_KIND_NAMES[kind]} tag {tag} at offset {offset + 1}")
    if schema.classes is not None and layout.cls not in schema.classes:
        raise WireError(f"expected {schema.name}, got {layout.cls.__name__} at offset {offset}")
    if kind == _ENUM:
        number, end = _decode_int(data, offset + 3)
        try:
            return layout.cls(number), end
        except ValueError:
            raise WireError(f"{number} is no {layout.cls.__name__} (offset {offset})") from None
    _need(data, offset + 3, 1, "a field count")
    if data[offset + 3] != len(layout.fields):
        raise WireError(f"{layout.cls.__name__} has {len(layout.fields)} fields, "
                        f"got {data[offset + 3]} at offset {offset + 3}")  # fmt: skip
    position = offset + 4
    values: dict[str, object] = {}
    for name, field_schema in layout.fields:
        try:
            values[name], position = _decode(data, position, field_schema, depth + 1)
        except WireError as error:
            raise error.within(f".{name}") from None
    try:
        return layout.cls(**values), position
    except MessageError as error:
        raise WireError(f"invalid {layout.cls.__name__} at offset {offset}: {error}") from None
