"""Bad input from peers and clients: rejected with evidence, never a crash, nothing changes."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.blocks import block_merkle
from consensus.encoding import canonical
from consensus.messages import (
    Accept,
    Block,
    FetchBlocks,
    MessageError,
    Propose,
    Request,
    Stop,
    Write,
    body_hash,
)
from ledger import Transfer, encode_transfers
from sim.script import ScriptedCluster


def _cluster_with_open_proposal() -> tuple[ScriptedCluster, Propose]:
    cluster = ScriptedCluster()
    cluster.run("request client=0 transfers=2")
    cluster.run("deliver type=Request")
    proposal = next(m for _, _, m in cluster.queue if isinstance(m, Propose))
    cluster.queue.clear()
    return cluster, proposal


def _step(cluster: ScriptedCluster, replica: int, message: object) -> list[str]:
    core = cluster.sim.core(replica)
    before = core.evidence_count
    effects = core.step(message)  # type: ignore[arg-type]
    assert core.decided_height == 0
    fresh = list(core.evidence)[len(core.evidence) - (core.evidence_count - before) :]
    return fresh + [type(s.message).__name__ for s in effects.send]


def test_proposal_with_wrong_parent_is_evidence_and_starts_a_regency_change() -> None:
    cluster, proposal = _cluster_with_open_proposal()
    header = dataclasses.replace(proposal.block.header, parent_hash=bytes(32))
    bad = cluster.signed(
        dataclasses.replace(proposal, block=Block(header=header, requests=proposal.block.requests)),
    )
    out = _step(cluster, 1, bad)
    assert any("wrong parent hash" in line for line in out)
    assert "Stop" in out and "Write" not in out


def test_proposal_with_undecodable_or_unsigned_request_is_refused() -> None:
    cluster, proposal = _cluster_with_open_proposal()
    request = proposal.block.requests[0]
    garbage = bytearray(request.transfers)
    garbage[119] = 0x80  # flag bit 15 is no transfer flag: the ledger cannot decode it
    forged = dataclasses.replace(request, transfers=bytes(garbage))
    # A header that matches the forged body, so the request check itself must refuse it.
    body = body_hash((forged,))
    header = dataclasses.replace(
        proposal.block.header, body_hash=body, merkle_root=block_merkle(body, (forged,))[0]
    )
    bad = cluster.signed(
        dataclasses.replace(proposal, block=Block(header=header, requests=(forged,)))
    )
    out = _step(cluster, 2, bad)
    assert any("not a valid client request" in line for line in out)


def test_header_whose_body_was_swapped_is_refused() -> None:
    cluster, proposal = _cluster_with_open_proposal()
    other = dataclasses.replace(proposal.block.requests[0], request_number=99)
    bad = cluster.signed(
        dataclasses.replace(proposal, block=Block(header=proposal.block.header, requests=(other,))),
    )
    assert any("body hash mismatch" in line for line in _step(cluster, 2, bad))


def test_far_future_timestamp_is_refused() -> None:
    cluster, proposal = _cluster_with_open_proposal()
    header = dataclasses.replace(
        proposal.block.header, timestamp=proposal.block.header.timestamp + 10**15
    )
    bad = cluster.signed(
        dataclasses.replace(proposal, block=Block(header=header, requests=proposal.block.requests)),
    )
    assert any("too far ahead" in line for line in _step(cluster, 3, bad))


def test_unsigned_and_misattributed_messages_are_dropped() -> None:
    cluster, proposal = _cluster_with_open_proposal()
    unsigned = dataclasses.replace(proposal, signature=b"")
    assert any("bad signature" in line for line in _step(cluster, 1, unsigned))
    forged = dataclasses.replace(proposal, sender=2)  # claims to be 2, signed by 0
    assert any(
        "non-leader" in line or "bad signature" in line for line in _step(cluster, 1, forged)
    )


def test_client_request_with_bad_records_or_signature_is_refused() -> None:
    cluster = ScriptedCluster()
    core = cluster.sim.core(0)
    records = bytearray(
        encode_transfers(
            [Transfer(id=1, debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1)]
        )
    )
    records[119] = 0x80  # flag bit 15: not a transfer flag
    unsigned = Request(client_id=0, request_number=1, transfers=bytes(records))
    core.step(unsigned)
    signed = dataclasses.replace(
        unsigned, signature=cluster.sim.client_signers[0].sign(canonical(unsigned))
    )
    core.step(signed)
    assert not core.pending
    assert any("bad client signature" in e for e in core.evidence)
    assert any("cannot execute" in e and "unknown bits" in e for e in core.evidence)


def test_malformed_shapes_cannot_be_built() -> None:
    with pytest.raises(MessageError, match="digest must be 32 bytes"):
        Write(sender=1, regency=0, height=1, digest=b"short")
    with pytest.raises(MessageError, match="non-negative"):
        Stop(sender=-1, regency=0)
    with pytest.raises(MessageError, match=r"1\.\.8189 records"):
        Request(client_id=0, request_number=1, transfers=b"\x00" * 100)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from([Write, Accept]),
    sender=st.integers(0, 6),
    regency=st.integers(0, 10**6),
    height=st.integers(0, 10**6),
    digest=st.binary(min_size=32, max_size=32),
    signature=st.binary(max_size=64),
    stop_regency=st.integers(0, 10**9),
    fetch_after=st.integers(0, 10**9),
)
def test_random_peer_messages_never_crash_a_replica(
    kind: type,
    sender: int,
    regency: int,
    height: int,
    digest: bytes,
    signature: bytes,
    stop_regency: int,
    fetch_after: int,
) -> None:
    cluster, _ = _cluster_with_open_proposal()
    core = cluster.sim.core(1)
    before = (core.decided_height, core.regency, core.sm.state_hash())
    for message in (
        kind(sender=sender, regency=regency, height=height, digest=digest, signature=signature),
        Stop(sender=sender, regency=stop_regency, signature=signature),
        FetchBlocks(sender=sender, after_height=fetch_after, signature=signature),
    ):
        core.step(message)
    core.tick()
    assert (core.decided_height, core.regency, core.sm.state_hash()) == before
