"""The agent gate: where deterministic agents decide each transfer (DESIGN 5).

Guarantees:

* An agent is a pure function ``(transfer, ledger view at the parent height,
  active artifacts) -> Verdict | None`` with integer fields only; no IO, no
  clock, no randomness, so every replica re-runs it and gets the same answer.
* ``AgentGate.screen`` runs the agents over a block's transfers against the
  state before the block (the parent height) and the artifacts active there;
  the first DENY wins.  The block carries the non-ALLOW verdicts
  (``encode_verdicts``) and its header commits to them, so a replica whose
  verdicts differ from the leader's rejects the block as leader misbehaviour,
  and a regulator can re-derive every decision from the block.
* Artifacts change only through the replicated ``set_limits`` command
  (``decode_limits``) and take effect from the next block.

The built-in policy is ``AmountLimitPolicy``: a per-account limit on what one
transfer may debit from an account, and a per-ledger limit on any transfer.
The fraud, sanctions and rules agents plug into the same ``Agent`` protocol.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from ledger import Account, Transfer, TransferFlags

U32_MAX = (1 << 32) - 1
U128_MAX = (1 << 128) - 1
# A plain int: ``int & IntFlag`` goes through enum's Python-level operator, once per
# transfer on every replica.
_POST_OR_VOID = int(TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER)


class Action(IntEnum):
    ALLOW = 0
    DENY = 1


class Policy(IntEnum):
    AMOUNT_LIMIT = 1


class Reason(IntEnum):
    ACCOUNT_LIMIT = 1  # more than the debit account's per-transfer limit
    LEDGER_LIMIT = 2  # more than the ledger's per-transfer limit


@dataclass(frozen=True, slots=True)
class Verdict:
    action: int
    policy: int = 0
    reason: int = 0
    limit: int = 0  # the limit that decided, for the audit trail

    def __post_init__(self) -> None:
        for name, top in (
            ("action", U32_MAX),
            ("policy", U32_MAX),
            ("reason", U32_MAX),
            ("limit", U128_MAX),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                raise ValueError(f"verdict {name} must be an int in 0..{top}: {value!r}")
            object.__setattr__(self, name, int(value))  # plain ints, whatever enum came in


ALLOW = Verdict(action=Action.ALLOW)


class LedgerView(Protocol):
    """Read-only ledger state at the parent height."""

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]: ...


# ------------------------------------------------------------------ artifacts

LIMIT_ACCOUNT = 1
LIMIT_LEDGER = 2
LIMIT_RECORD = struct.Struct("<II QQ QQ 88x")  # kind, reserved, id u128, limit u128, zeros
assert LIMIT_RECORD.size == 128  # one canonical record, like a transfer


class LimitError(ValueError):
    """A set_limits command whose records are malformed."""


@dataclass(frozen=True, slots=True)
class Artifacts:
    """What the agents decide with; replicated state, pinned by ``digest``."""

    account_limits: tuple[tuple[int, int], ...] = ()  # (account id, limit), sorted
    ledger_limits: tuple[tuple[int, int], ...] = ()  # (ledger, limit), sorted
    _by_account: dict[int, int] = field(default_factory=dict, compare=False, repr=False)
    _by_ledger: dict[int, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_account.update(self.account_limits)
        self._by_ledger.update(self.ledger_limits)

    @property
    def empty(self) -> bool:
        return not self.account_limits and not self.ledger_limits

    def account_limit(self, account_id: int) -> int | None:
        return self._by_account.get(account_id)

    def ledger_limit(self, ledger: int) -> int | None:
        return self._by_ledger.get(ledger)

    def encode(self) -> bytes:
        """Canonical bytes: every limit as a set_limits record, accounts then ledgers."""
        return b"".join(
            _pack_limit(kind, key, limit)
            for kind, pairs in ((LIMIT_ACCOUNT, self.account_limits),
                                (LIMIT_LEDGER, self.ledger_limits))
            for key, limit in pairs
        )  # fmt: skip

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(b"aegis.artifacts.v1" + self.encode()).digest()

    def with_limits(self, changes: Iterable[tuple[int, int, int]]) -> Artifacts:
        """Apply (kind, id, limit) changes in order; a limit of 0 removes it."""
        accounts, ledgers = dict(self.account_limits), dict(self.ledger_limits)
        for kind, key, limit in changes:
            table = accounts if kind == LIMIT_ACCOUNT else ledgers
            if limit:
                table[key] = limit
            else:
                table.pop(key, None)
        return Artifacts(
            account_limits=tuple(sorted(accounts.items())),
            ledger_limits=tuple(sorted(ledgers.items())),
        )

    @staticmethod
    def decode(data: bytes) -> Artifacts:
        changes = decode_limits(data) if data else []
        artifacts = NO_ARTIFACTS.with_limits(changes)
        if artifacts.encode() != data:
            raise LimitError("artifact bytes are not in canonical order")
        return artifacts


NO_ARTIFACTS = Artifacts()


def _pack_limit(kind: int, key: int, limit: int) -> bytes:
    mask = (1 << 64) - 1
    return LIMIT_RECORD.pack(kind, 0, key & mask, key >> 64, limit & mask, limit >> 64)


def encode_limits(changes: Iterable[tuple[int, int, int]]) -> bytes:
    """The payload of a set_limits command: one 128-byte record per (kind, id, limit)."""
    return b"".join(_pack_limit(kind, key, limit) for kind, key, limit in changes)


def decode_limits(data: bytes) -> list[tuple[int, int, int]]:
    """Strictly decode set_limits records; raises LimitError, never anything else."""
    if not data or len(data) % LIMIT_RECORD.size:
        raise LimitError(f"set_limits payload of {len(data)} bytes is not 128-byte records")
    changes = []
    for offset in range(0, len(data), LIMIT_RECORD.size):
        record = data[offset : offset + LIMIT_RECORD.size]
        if any(record[40:]):
            raise LimitError(f"record {offset // 128}: reserved bytes must be zero")
        kind, reserved, key_low, key_high, limit_low, limit_high = LIMIT_RECORD.unpack(record)
        key, limit = key_low | key_high << 64, limit_low | limit_high << 64
        if reserved:
            raise LimitError(f"record {offset // 128}: reserved field must be zero")
        if kind not in (LIMIT_ACCOUNT, LIMIT_LEDGER):
            raise LimitError(f"record {offset // 128}: unknown limit kind {kind}")
        if key == 0 or (kind == LIMIT_LEDGER and key > U32_MAX):
            raise LimitError(f"record {offset // 128}: id {key} is not a valid target")
        changes.append((kind, key, limit))
    return changes


# ------------------------------------------------------------------ agents


class Agent(Protocol):
    def decide(self, transfer: Transfer, view: LedgerView, artifacts: Artifacts) -> Verdict | None:
        """A verdict, or None when this agent has no objection."""
        ...


class AmountLimitPolicy:
    """Deny a transfer above its debit account's or its ledger's per-transfer limit.

    Posting or voiding a pending transfer moves value decided when it was created,
    so only new transfers are screened."""

    def decide(self, transfer: Transfer, view: LedgerView, artifacts: Artifacts) -> Verdict | None:
        if artifacts.empty or transfer.flags & _POST_OR_VOID:
            return None
        limit = artifacts.account_limit(transfer.debit_account_id)
        if limit is not None and transfer.amount > limit:
            return Verdict(Action.DENY, Policy.AMOUNT_LIMIT, Reason.ACCOUNT_LIMIT, limit)
        limit = artifacts.ledger_limit(transfer.ledger)
        if limit is not None and transfer.amount > limit:
            return Verdict(Action.DENY, Policy.AMOUNT_LIMIT, Reason.LEDGER_LIMIT, limit)
        return None


class AgentGate:
    def __init__(self, agents: Sequence[Agent] = (AmountLimitPolicy(),)) -> None:
        self.agents = tuple(agents)

    def screen(
        self, transfers: Sequence[Transfer], view: LedgerView, artifacts: Artifacts
    ) -> list[Verdict]:
        """One verdict per transfer: the first agent's DENY, else ``ALLOW`` itself (so
        ``verdicts.count(ALLOW)`` is cheap: list.count tries identity first)."""
        agents = self.agents
        verdicts = [ALLOW] * len(transfers)
        for index, transfer in enumerate(transfers):
            for agent in agents:
                decided = agent.decide(transfer, view, artifacts)
                if decided is not None and decided.action == Action.DENY:
                    verdicts[index] = decided
                    break
        return verdicts


# ------------------------------------------------------------------ in the block

VERDICT_RECORD = struct.Struct("<IIIIII QQ")  # request, event, action, policy, reason, 0, limit
NO_VERDICTS_HASH = hashlib.sha256(b"").digest()


def encode_verdicts(verdicts: Iterable[tuple[int, int, Verdict]]) -> bytes:
    """The block's verdict list: (request index, event index, verdict) for every
    verdict that is not ALLOW, in block order; ALLOW is implied for the rest."""
    mask = (1 << 64) - 1
    return b"".join(
        VERDICT_RECORD.pack(request, event, v.action, v.policy, v.reason, 0,
                            v.limit & mask, v.limit >> 64)
        for request, event, v in verdicts
        if v.action != Action.ALLOW
    )  # fmt: skip


def verdicts_hash(encoded: bytes) -> bytes:
    return hashlib.sha256(encoded).digest()
