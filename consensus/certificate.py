"""Commit certificates (q signed ACCEPTs) and fallback election proofs.

Guarantees: ``verify`` returns True only if the certificate carries valid
signatures from at least q *distinct*, *known* replicas over
``canonical(Accept(sender=i, regency, height, digest))`` for its own regency,
height and digest.  ``election_valid`` returns True only if a fallback
election proof holds granted votes for its candidate in ``term`` from a
majority of distinct, known replicas.  Neither raises on malformed content.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.crypto import Verifier
from consensus.encoding import canonical
from consensus.messages import Accept, Certificate, ElectionProof
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


def election_valid(election: ElectionProof, term: int, verifier: Verifier, replicas: int) -> bool:
    """A majority of signed, granted votes for ``election.candidate`` in ``term``."""
    if election.term != term:
        return False
    voters: set[int] = set()
    for vote in election.votes:
        if (vote.term, vote.candidate, vote.granted, vote.pre) != (
            term,
            election.candidate,
            True,
            False,
        ):
            return False
        if not 0 <= vote.sender < replicas or vote.sender in voters:
            return False
        if not verifier.verify(vote.sender, canonical(vote), vote.signature):
            return False
        voters.add(vote.sender)
    return len(voters) >= replicas // 2 + 1
