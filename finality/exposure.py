"""The provisional exposure limit (DESIGN 3.3): how much a fallback epoch may admit.

Guarantees: ``admit_provisional`` is a pure function of (transfers, limit,
usage so far); it decides, in event order and before the ledger sees any of
them, which transfers of one request a fallback block may pass to the ledger.
Admitted usage never exceeds the limit: a transfer whose admission would push
the epoch's count above ``max_transfers`` or its amount above ``max_amount``
is vetoed with ``EXCEEDS_PROVISIONAL_EXPOSURE``, and a vetoed transfer takes
its whole linked chain with it (the other members get the ledger's
``LINKED_EVENT_FAILED``), so TigerBeetle's all-or-nothing chains hold and the
chains the ledger still sees are exactly the ones the client sent.  Usage
counts admitted transfers whatever the ledger then answers: conservative, and
a function of the block alone.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from ledger import U128_MAX, CreateTransferResult, Transfer, TransferFlags

U64_MAX = (1 << 64) - 1

_LINKED = int(TransferFlags.LINKED)
_POST_OR_VOID = int(TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER)
_LINKED_EVENT_FAILED = int(CreateTransferResult.LINKED_EVENT_FAILED)


class FinalityResult(enum.IntEnum):
    """Result codes the finality pipeline gives in place of the ledger's.

    They share the one-byte-per-event results table with ``CreateTransferResult``,
    so they sit above TigerBeetle's range (0..68) and below 256.
    """

    # Admitting the transfer would take the fallback epoch past its exposure limit.
    # Not remembered as a failure: the same id may be retried and succeed once BFT
    # finality resumes (a BFT block resets the epoch).
    EXCEEDS_PROVISIONAL_EXPOSURE = 200
    # The agent gate (DESIGN 5) gave a DENY verdict; the block carries the verdict.
    DENIED_BY_POLICY = 201
    # A set_limits record from a client that is not one of the cluster's operators.
    NOT_AN_OPERATOR = 202


assert all(code.value < 256 for code in FinalityResult)
assert not {int(code) for code in FinalityResult} & {int(code) for code in CreateTransferResult}


@dataclass(frozen=True, slots=True)
class ExposureLimit:
    """The most a fallback epoch may admit: a count of transfers and an amount in minor units."""

    max_transfers: int
    max_amount: int

    def __post_init__(self) -> None:
        if type(self.max_transfers) is not int or not 0 <= self.max_transfers <= U64_MAX:
            raise ValueError(f"max_transfers must be an int in 0..2**64-1: {self.max_transfers!r}")
        if type(self.max_amount) is not int or not 0 <= self.max_amount <= U128_MAX:
            raise ValueError(f"max_amount must be an int in 0..2**128-1: {self.max_amount!r}")


# One thousand provisional transfers and 10**9 minor units (ten million in a
# two-decimal currency) per fallback epoch: enough to keep payments flowing
# through a partition of a few minutes, small enough that S3 (rolled-back
# provisional value never exceeds the limit) bounds a real loss.  Operators set
# their own; every replica of a cluster must use the same limit.
DEFAULT_EXPOSURE = ExposureLimit(max_transfers=1_000, max_amount=10**9)


@dataclass(frozen=True, slots=True)
class ExposureUsage:
    """What the current fallback epoch has admitted so far (replicated state)."""

    transfers: int = 0
    amount: int = 0

    def __post_init__(self) -> None:
        if type(self.transfers) is not int or not 0 <= self.transfers <= U64_MAX:
            raise ValueError(f"exposure transfers must be an int in 0..2**64-1: {self.transfers!r}")
        if type(self.amount) is not int or not 0 <= self.amount <= U128_MAX:
            raise ValueError(f"exposure amount must be an int in 0..2**128-1: {self.amount!r}")

    @property
    def is_zero(self) -> bool:
        return self.transfers == 0 and self.amount == 0


NO_EXPOSURE = ExposureUsage()


def counted_amount(transfer: Transfer) -> int:
    """The amount a transfer adds to the epoch: post and void move value a pending
    transfer already counted, so they add nothing."""
    if transfer.flags & _POST_OR_VOID:
        return 0
    assert 0 <= transfer.amount <= U128_MAX  # Transfer validates; keeps the sum bounded
    return transfer.amount


def _chains(transfers: Sequence[Transfer]) -> list[tuple[int, int]]:
    """(first, last) of each chain: a maximal run of linked events plus the first one
    after them without the flag (or the request's end, when the chain is left open)."""
    spans = []
    start, count = 0, len(transfers)
    while start < count:
        end = start
        while end < count - 1 and transfers[end].flags & _LINKED:
            end += 1
        spans.append((start, end))
        start = end + 1
    return spans


def withhold_chains(
    transfers: Sequence[Transfer], vetoes: Sequence[int | None]
) -> list[int | None]:
    """Spread vetoes over linked chains: a vetoed event keeps its code, the rest of its
    chain gets ``linked_event_failed``; None marks events the ledger must still see."""
    out = list(vetoes)
    for start, end in _chains(transfers):
        if any(vetoes[i] is not None for i in range(start, end + 1)):
            for index in range(start, end + 1):
                if vetoes[index] is None:
                    out[index] = _LINKED_EVENT_FAILED
    return out


def admit_provisional(
    transfers: Sequence[Transfer], limit: ExposureLimit, used: ExposureUsage
) -> tuple[list[int | None], ExposureUsage]:
    """Screen one request of a fallback block against the limit.

    Returns one entry per event — None for an event the ledger must see, else
    the result code it gets without reaching the ledger — and the epoch's usage
    after the admitted events.
    """
    count = len(transfers)
    verdicts: list[int | None] = [None] * count
    admitted_transfers, admitted_amount = used.transfers, used.amount
    start = 0
    while start < count:
        # A chain: a maximal run of linked events plus the first one after them
        # without the flag (or the request's end, when the chain is left open).
        end = start
        while end < count - 1 and transfers[end].flags & _LINKED:
            end += 1
        chain_transfers, chain_amount = admitted_transfers, admitted_amount
        vetoed = -1
        for index in range(start, end + 1):
            next_transfers = chain_transfers + 1
            next_amount = chain_amount + counted_amount(transfers[index])
            if next_transfers > limit.max_transfers or next_amount > limit.max_amount:
                vetoed = index
                break
            chain_transfers, chain_amount = next_transfers, next_amount
        if vetoed < 0:
            admitted_transfers, admitted_amount = chain_transfers, chain_amount
        else:
            for index in range(start, end + 1):
                verdicts[index] = _LINKED_EVENT_FAILED
            verdicts[vetoed] = int(FinalityResult.EXCEEDS_PROVISIONAL_EXPOSURE)
        start = end + 1
    assert admitted_transfers - used.transfers == verdicts.count(None)
    assert admitted_transfers <= max(limit.max_transfers, used.transfers)
    assert admitted_amount <= max(limit.max_amount, used.amount)
    return verdicts, ExposureUsage(admitted_transfers, admitted_amount)
