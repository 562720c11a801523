"""Canonical, injective encoding of protocol values for hashing and signing.

Guarantees: ``canonical(value)`` is a pure function; two values encode to the
same bytes only if they are equal (every item carries a type tag and a
length, dataclasses carry their class name and field names).  Supported:
int (any sign), bytes, str, bool, None, tuples, and frozen dataclasses of
those.  Fields named ``signature`` are left out, so a message's signing bytes
are ``canonical(message)``.  A value may name a stand-in that commits to it
(``canonical_stand_in``): a block is encoded as its header, whose body hash
covers the requests, so signing a PROPOSE costs the same for any block size;
receivers check the body hash before trusting the requests.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SIGNATURE_FIELD = "signature"


# Per dataclass type: the encoded header (tag, class name, field count) and each
# field's encoded key, computed once; the encoding is the same as spelling them out.
_LAYOUTS: dict[type, tuple[bytes, tuple[tuple[bytes, str], ...]]] = {}


def _layout(cls: type) -> tuple[bytes, tuple[tuple[bytes, str], ...]]:
    name = cls.__name__.encode()
    fields = [f.name for f in dataclasses.fields(cls) if f.name != SIGNATURE_FIELD]
    prefix = b"d" + _length(len(name)) + name + _length(len(fields))
    return prefix, tuple((_length(len(f.encode())) + f.encode(), f) for f in fields)


def canonical(value: Any) -> bytes:
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _length(n: int) -> bytes:
    return n.to_bytes(4, "big")


def _encode(value: Any, out: list[bytes]) -> None:
    if value is None:
        out.append(b"N")
    elif value is True or value is False:
        out.append(b"T" if value else b"F")
    elif type(value) is int or isinstance(value, int):
        raw = int(value).to_bytes((int(value).bit_length() + 8) // 8 or 1, "big", signed=True)
        out += (b"i", _length(len(raw)), raw)
    elif isinstance(value, bytes):
        out += (b"b", _length(len(value)), value)
    elif isinstance(value, str):
        raw = value.encode()
        out += (b"s", _length(len(raw)), raw)
    elif isinstance(value, tuple):
        out += (b"t", _length(len(value)))
        for item in value:
            _encode(item, out)
    elif hasattr(value, "canonical_stand_in"):
        # A value whose header commits to the rest (a Block: its header's body
        # hash covers the requests) is signed and hashed through that header.
        _encode(value.canonical_stand_in(), out)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        layout = _LAYOUTS.get(type(value))
        if layout is None:
            layout = _LAYOUTS[type(value)] = _layout(type(value))
        prefix, fields = layout
        out.append(prefix)
        for key, name in fields:
            out.append(key)
            _encode(getattr(value, name), out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} canonically")
