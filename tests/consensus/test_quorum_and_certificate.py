"""Quorum arithmetic and offline certificate verification."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from consensus import certificate
from consensus.crypto import Ed25519Signer, Ed25519Verifier
from consensus.encoding import canonical
from consensus.messages import Accept, Certificate
from consensus.quorum import faults_tolerated, leader_of, quorum, weak_quorum

DIGEST = bytes(range(32))


@pytest.mark.parametrize("n", [4, 7, 10, 13])
def test_any_two_quorums_share_an_honest_replica(n: int) -> None:
    f, q = faults_tolerated(n), quorum(n)
    assert (n, q, weak_quorum(n)) == (3 * f + 1, 2 * f + 1, f + 1)
    # Smallest possible overlap of two quorums, minus f Byzantine, is still >= 1.
    assert 2 * q - n - f >= 1
    if n <= 7:
        for a, b in itertools.combinations(itertools.combinations(range(n), q), 2):
            assert len(set(a) & set(b)) >= f + 1


@pytest.mark.parametrize("n", [0, 1, 3, 5, 6, 8])
def test_other_sizes_are_refused(n: int) -> None:
    with pytest.raises(ValueError, match="3f \\+ 1"):
        quorum(n)


def test_leader_rotates() -> None:
    assert [leader_of(r, 4) for r in range(6)] == [0, 1, 2, 3, 0, 1]


SIGNERS = [Ed25519Signer.from_seed(f"cert test {i}".encode()) for i in range(5)]
VERIFIER = Ed25519Verifier({i: s.public_key_bytes() for i, s in enumerate(SIGNERS[:4])})


def _sign(signer: int, digest: bytes = DIGEST, regency: int = 2, height: int = 9) -> bytes:
    accept = Accept(sender=signer, regency=regency, height=height, digest=digest)
    return SIGNERS[signer].sign(canonical(accept))


def _cert(*signers: int, **fields: object) -> Certificate:
    cert = Certificate(
        regency=2, height=9, digest=DIGEST, signatures=tuple((s, _sign(s)) for s in signers)
    )
    return dataclasses.replace(cert, **fields) if fields else cert  # type: ignore[arg-type]


def test_valid_certificate() -> None:
    assert certificate.check(_cert(0, 1, 3), VERIFIER, 4).valid
    assert certificate.verify(_cert(0, 1, 2, 3), VERIFIER, 4)


@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        (_cert(0, 1), "2 signatures, 3 needed"),
        (_cert(0, 1, 1), "replica 1 signed twice"),
        (_cert(0, 1, 4), "unknown signer 4"),
        (_cert(0, 1, 2, digest=bytes(32)), "bad signature from replica 0"),
        (_cert(0, 1, 2, height=10), "bad signature"),
        (_cert(0, 1, 2, regency=3), "bad signature"),
        (
            Certificate(
                regency=2,
                height=9,
                digest=DIGEST,
                signatures=((0, _sign(0)), (1, _sign(1)), (2, _sign(3))),
            ),
            "replica 2",
        ),
        (
            Certificate(
                regency=2,
                height=9,
                digest=DIGEST,
                signatures=((0, _sign(0)), (1, _sign(1)), (2, b"\x00" * 64)),
            ),
            "replica 2",
        ),
    ],
    ids=[
        "too few",
        "duplicate signer",
        "unknown key",
        "wrong digest",
        "wrong height",
        "wrong regency",
        "signature of another replica",
        "garbage signature",
    ],
)
def test_invalid_certificates_are_refused(cert: Certificate, reason: str) -> None:
    verdict = certificate.check(cert, VERIFIER, 4)
    assert not verdict.valid
    assert reason in verdict.reason


def test_encoding_leaves_out_the_signature_and_is_injective() -> None:
    a = Accept(sender=1, regency=2, height=3, digest=DIGEST)
    assert canonical(a) == canonical(dataclasses.replace(a, signature=b"x" * 64))
    variants = {
        canonical(dataclasses.replace(a, **{name: value}))
        for name, value in [("sender", 2), ("regency", 3), ("height", 4), ("digest", bytes(32))]
    }
    assert len(variants) == 4 and canonical(a) not in variants
    assert canonical((b"ab", b"c")) != canonical((b"a", b"bc"))
    assert canonical(1) != canonical(True) and canonical(0) != canonical(None)
