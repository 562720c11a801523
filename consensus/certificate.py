"""Commit certificates: q signed ACCEPTs, verifiable by anyone with the keys.

Guarantees: ``verify`` returns True only if the certificate carries valid
signatures from at least q *distinct*, *known* replicas over
``canonical(Accept(sender=i, regency, height, digest))`` for its own regency,
height and digest.  It never raises on malformed content.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.crypto import Verifier
from consensus.encoding import canonical
from consensus.messages import Accept, Certificate
from consensus.quorum import quorum


@dataclass(frozen=True, slots=True)
class Verdict:
    valid: bool
    reason: str


def check(certificate: Certificate, verifier: Verifier, replicas: int) -> Verdict:
    needed = quorum(replicas)
    seen: set[int] = set()
    for signer, signature in certificate.signatures:
        if signer in seen:
            return Verdict(False, f"replica {signer} signed twice")
        if not 0 <= signer < replicas:
            return Verdict(False, f"unknown signer {signer}")
        accept = Accept(
            sender=signer,
            regency=certificate.regency,
            height=certificate.height,
            digest=certificate.digest,
        )
        if not verifier.verify(signer, canonical(accept), signature):
            return Verdict(False, f"bad signature from replica {signer}")
        seen.add(signer)
    if len(seen) < needed:
        return Verdict(False, f"{len(seen)} signatures, {needed} needed")
    return Verdict(True, "ok")


def verify(certificate: Certificate, verifier: Verifier, replicas: int) -> bool:
    return check(certificate, verifier, replicas).valid
