"""Hash commitments behind the ledger's state hash.

Guarantees: ``LeafCommitment.root()`` is a collision-resistant function of the
ordered list of fixed-size leaves (SHA-256, domain-separated, length-bound), and
costs O(leaves changed since the last root + buckets) rather than O(state):
leaves live in fixed buckets of ``BUCKET_LEAVES``, and only buckets touched
since the last call are re-hashed.  Plain hashing, not an additive multiset
hash, because additive hashes over 256 bits fall to generalized-birthday
attacks and a state hash must stand up to a Byzantine peer offering a forged
snapshot.  Leaves are the canonical bytes themselves (not their digests): one
SHA-256 over a 32 KiB bucket costs far less than 256 small hashes in Python.
"""

from __future__ import annotations

import hashlib

BUCKET_LEAVES = 256
_BUCKET_SHIFT = 8
assert 1 << _BUCKET_SHIFT == BUCKET_LEAVES
_BUCKET_DOMAIN = b"\x01"


class LeafCommitment:
    """An append-or-overwrite array of fixed-size leaves with a cached root."""

    __slots__ = ("_buckets", "_dirty", "_domain", "_leaf_size", "_leaves", "_root")

    def __init__(self, domain: bytes, leaf_size: int) -> None:
        assert domain, "a commitment needs a domain tag"
        assert leaf_size > 0
        self._domain = domain
        self._leaf_size = leaf_size
        self._leaves: list[bytes] = []
        self._buckets: list[bytes] = []
        self._dirty: set[int] = set()
        self._root: bytes | None = None

    def __len__(self) -> int:
        return len(self._leaves)

    def set(self, index: int, leaf: bytes) -> None:
        """Overwrite leaf ``index``, or append it when ``index == len(self)``."""
        assert len(leaf) == self._leaf_size, (len(leaf), self._leaf_size)
        assert 0 <= index <= len(self._leaves), (index, len(self._leaves))
        if index == len(self._leaves):
            self._leaves.append(leaf)
        else:
            self._leaves[index] = leaf
        self._dirty.add(index // BUCKET_LEAVES)
        self._root = None

    def set_many(self, indexes: list[int], leaves: list[bytes]) -> None:
        """``set`` for many leaves at once; appended indexes must come in order."""
        assert len(indexes) == len(leaves)
        array = self._leaves
        dirty = self._dirty
        size = self._leaf_size
        for index, leaf in zip(indexes, leaves, strict=True):
            assert len(leaf) == size
            if index == len(array):
                array.append(leaf)
            else:
                array[index] = leaf  # IndexError on a gap: appends must ascend
            dirty.add(index >> _BUCKET_SHIFT)
        self._root = None

    def truncate(self, size: int) -> None:
        """Drop every leaf from ``size`` on (undoing appends, ``ledger.change``); a no-op
        when there are no more than ``size``."""
        assert size >= 0
        if size >= len(self._leaves):
            return
        del self._leaves[size:]
        buckets = -(-size // BUCKET_LEAVES)
        del self._buckets[buckets:]
        self._dirty = {b for b in self._dirty if b < buckets}
        if size % BUCKET_LEAVES:
            self._dirty.add(size // BUCKET_LEAVES)  # its last bucket lost leaves
        self._root = None

    def root(self) -> bytes:
        if self._root is not None:
            return self._root
        leaves = self._leaves
        buckets = self._buckets
        for bucket in sorted(self._dirty):
            start = bucket * BUCKET_LEAVES
            digest = hashlib.sha256(
                _BUCKET_DOMAIN + b"".join(leaves[start : start + BUCKET_LEAVES])
            ).digest()
            if bucket == len(buckets):
                buckets.append(digest)
            else:
                buckets[bucket] = digest
        self._dirty.clear()
        assert len(buckets) == -(-len(leaves) // BUCKET_LEAVES)
        self._root = hashlib.sha256(
            self._domain + len(leaves).to_bytes(8, "little") + b"".join(buckets)
        ).digest()
        return self._root
