"""Signing and verification behind two small protocols.

Guarantees: the cores see only ``Signer.sign(data)`` and
``Verifier.verify(signer_id, data, signature) -> bool``; ``verify`` never
raises on bad input (a forged or malformed signature is just ``False``).
Ed25519 via ``cryptography`` is the implementation; a PKCS#11 token can stand
behind the same protocol later.  Key generation takes the randomness it is
given, so the simulator derives keys from its seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SIGNATURE_SIZE = 64


class Signer(Protocol):
    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    def verify(self, signer_id: int, data: bytes, signature: bytes) -> bool: ...


class Ed25519Signer:
    __slots__ = ("_key",)

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key

    @classmethod
    def from_seed(cls, seed: bytes) -> Ed25519Signer:
        """Deterministic key from seed material (32 bytes are derived from it)."""
        return cls(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest()))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_key_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Ed25519Verifier:
    """Verifies against a fixed id -> public key table.

    ``cache_max`` > 0 memoises results by (id, data, signature): verification
    is a pure function, so a process that holds several replicas (the
    simulator) need not verify one broadcast message once per recipient.
    """

    __slots__ = ("_cache", "_cache_max", "_keys")

    def __init__(self, public_keys: Mapping[int, bytes], cache_max: int = 0) -> None:
        self._keys = {i: Ed25519PublicKey.from_public_bytes(k) for i, k in public_keys.items()}
        self._cache: dict[tuple[int, bytes, bytes], bool] = {}
        self._cache_max = cache_max

    def knows(self, signer_id: int) -> bool:
        return signer_id in self._keys

    def verify(self, signer_id: int, data: bytes, signature: bytes) -> bool:
        key = self._keys.get(signer_id)
        if key is None or type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
            return False
        if self._cache_max:
            cache_key = (signer_id, data, signature)
            known = self._cache.get(cache_key)
            if known is not None:
                return known
        try:
            key.verify(signature, data)
            valid = True
        except InvalidSignature:
            valid = False
        if self._cache_max:
            if len(self._cache) >= self._cache_max:
                self._cache.clear()  # bounded; a cold cache only costs time
            self._cache[cache_key] = valid
        return valid
