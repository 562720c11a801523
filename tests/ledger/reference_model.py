"""The slow, obvious reference ledger for differential tests.

TigerBeetle 0.16 create/lookup/query semantics (the project's semantics spec,
sections 2-4) done as literally as possible: plain dicts of mutable records,
checks in the spec's order, linked-chain rollback by ``copy.deepcopy`` of the
whole state.  Written for obviousness, not speed, and without looking at
``ledger.state_machine``, so that the two can be compared.

Project decisions on top of the spec:
* event i of n in a call with batch timestamp T gets T - n + i + 1;
* the ``imported`` bits are reserved (RESERVED_FLAG); no imported events;
* expiry runs at the start of every create/pulse call for every pending
  transfer with expires_at <= T - n, ordered by (expires_at, timestamp);
  it creates no transfer and no balance-history row.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ledger.results import TRANSIENT_TRANSFER_RESULTS, CreateAccountResult, CreateTransferResult
from ledger.types import (
    BATCH_EVENTS_MAX,
    U128_MAX,
    Account,
    AccountBalance,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    Transfer,
    TransferFlags,
)

TIMESTAMP_MAX = 2**63 - 1
NS_PER_S = 1_000_000_000
ACCOUNT_FLAGS_MASK = 0b101111  # bit 4 (imported) is reserved here
TRANSFER_FLAGS_MASK = 0xFF  # bit 8 (imported) is reserved here
FILTER_FLAGS_MASK = 0b111
USER_DATA = ("user_data_128", "user_data_64", "user_data_32")
BALANCES = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")

AR = CreateAccountResult
TR = CreateTransferResult
TF = TransferFlags
DR_LIMIT = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
CR_LIMIT = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
CLOSED = int(AccountFlags.CLOSED)  # plain int: IntFlag's ~ is not a bitwise not
NOT_WITH_POST_OR_VOID = (
    TF.PENDING | TF.BALANCING_DEBIT | TF.BALANCING_CREDIT | TF.CLOSING_DEBIT | TF.CLOSING_CREDIT
)


def _balance(acc: SimpleNamespace, timestamp: int) -> AccountBalance:
    """The account's balances right now, as a get_account_balances row."""
    return AccountBalance(**{name: getattr(acc, name) for name in BALANCES}, timestamp=timestamp)


@dataclass
class _State:
    """Everything a broken linked chain must roll back (spec 3.2)."""

    # account id -> mutable copy of the Account (same field names)
    accounts: dict[int, SimpleNamespace] = field(default_factory=dict)
    transfers: dict[int, Transfer] = field(default_factory=dict)
    # pending transfer id -> "pending" | "posted" | "voided" | "expired"
    pending_status: dict[int, str] = field(default_factory=dict)
    # transfer timestamp -> {account id: its balances right after that transfer}
    history: dict[int, dict[int, AccountBalance]] = field(default_factory=dict)


class ReferenceLedger:
    def __init__(self) -> None:
        self.state = _State()
        self.orphaned: set[int] = set()  # spec 3.6: NOT part of the rollback state
        self.last_timestamp = 0

    # ------------------------------------------------------------------ time

    def _begin(self, timestamp: int, n: int) -> None:
        if n > BATCH_EVENTS_MAX:
            raise ValueError(f"batch of {n} events exceeds {BATCH_EVENTS_MAX}")
        assert timestamp <= TIMESTAMP_MAX
        assert timestamp - n + 1 > self.last_timestamp if n else timestamp > self.last_timestamp
        self.last_timestamp = timestamp
        self._expire(timestamp - n)

    def _expire(self, cutoff: int) -> None:
        """Project rule 3 / spec 3.7: release every pending transfer expiring <= cutoff."""
        expiring = []
        for pid, status in self.state.pending_status.items():
            p = self.state.transfers[pid]
            if status == "pending" and p.timeout > 0:
                expires_at = p.timestamp + p.timeout * NS_PER_S
                if expires_at <= cutoff:
                    expiring.append((expires_at, p.timestamp, pid))
        for _, _, pid in sorted(expiring):
            self._release(self.state.transfers[pid], "expired")

    def _release(self, p: Transfer, status: str) -> None:
        """Post/void/expiry: release the FULL pending amount; void/expiry reopen (3.5, 3.7)."""
        dr = self.state.accounts[p.debit_account_id]
        cr = self.state.accounts[p.credit_account_id]
        dr.debits_pending -= p.amount
        cr.credits_pending -= p.amount
        if status != "posted" and p.flags & TF.CLOSING_DEBIT:
            dr.flags &= ~CLOSED
        if status != "posted" and p.flags & TF.CLOSING_CREDIT:
            cr.flags &= ~CLOSED
        self.state.pending_status[p.id] = status

    def pulse(self, timestamp: int) -> None:
        self._begin(timestamp, 0)

    # ------------------------------------------------------- batch loop (3.2)

    def _run_batch(self, events: Sequence[Any], ts: int, create: Any, codes: Any) -> list[Any]:
        """`codes` is AR or TR; both enums share the loop's names and numbers."""
        n = len(events)
        self._begin(ts, n)
        results: list[Any] = []
        chain_start: int | None = None
        chain_broken = False
        saved: _State | None = None
        for i, event in enumerate(events):
            linked = event.flags & 1 != 0  # bit 0 is `linked` for both record kinds
            if linked and chain_start is None:
                chain_start = i
                saved = copy.deepcopy(self.state)
            if linked and i == n - 1:
                result = codes.LINKED_EVENT_CHAIN_OPEN
            elif chain_broken:
                result = codes.LINKED_EVENT_FAILED
            elif event.timestamp != 0:
                result = codes.TIMESTAMP_MUST_BE_ZERO
            else:
                result = create(dataclasses.replace(event, timestamp=ts - n + i + 1))
            if result != 0:
                if chain_start is not None and not chain_broken:
                    chain_broken = True
                    assert saved is not None
                    self.state = saved  # roll back the whole chain
                    for j in range(chain_start, i):
                        results[j] = codes.LINKED_EVENT_FAILED
                # spec 3.6: recorded after the restore, so it survives the rollback
                if codes is TR and result in TRANSIENT_TRANSFER_RESULTS:
                    self.orphaned.add(event.id)
            results.append(result)
            if chain_start is not None and (not linked or result == codes.LINKED_EVENT_CHAIN_OPEN):
                chain_start, chain_broken, saved = None, False, None
        return results

    def create_accounts(
        self, accounts: Sequence[Account], timestamp: int
    ) -> list[CreateAccountResult]:
        return self._run_batch(accounts, timestamp, self._create_account, AR)

    def create_transfers(
        self, transfers: Sequence[Transfer], timestamp: int
    ) -> list[CreateTransferResult]:
        return self._run_batch(transfers, timestamp, self._create_transfer, TR)

    # ------------------------------------------------------ create_account (3.3)

    def _create_account(self, a: Account) -> CreateAccountResult:
        # No reserved field in this Account type, so RESERVED_FIELD is unreachable.
        if a.flags & ~ACCOUNT_FLAGS_MASK:
            return AR.RESERVED_FLAG
        if a.id == 0:
            return AR.ID_MUST_NOT_BE_ZERO
        if a.id == U128_MAX:
            return AR.ID_MUST_NOT_BE_INT_MAX
        if a.id in self.state.accounts:
            e = self.state.accounts[a.id]
            for name in ("flags", *USER_DATA, "ledger", "code"):
                if getattr(a, name) != getattr(e, name):
                    return CreateAccountResult[f"EXISTS_WITH_DIFFERENT_{name.upper()}"]
            return AR.EXISTS
        if a.flags & DR_LIMIT and a.flags & CR_LIMIT:
            return AR.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        for name in BALANCES:
            if getattr(a, name) != 0:
                return CreateAccountResult[f"{name.upper()}_MUST_BE_ZERO"]
        if a.ledger == 0:
            return AR.LEDGER_MUST_NOT_BE_ZERO
        if a.code == 0:
            return AR.CODE_MUST_NOT_BE_ZERO
        self.state.accounts[a.id] = SimpleNamespace(**dataclasses.asdict(a))
        return AR.OK

    # ----------------------------------------------------- create_transfer (3.4)

    def _create_transfer(self, t: Transfer) -> CreateTransferResult:
        s = self.state
        if t.flags & ~TRANSFER_FLAGS_MASK:
            return TR.RESERVED_FLAG
        if t.id == 0:
            return TR.ID_MUST_NOT_BE_ZERO
        if t.id == U128_MAX:
            return TR.ID_MUST_NOT_BE_INT_MAX
        if t.id in s.transfers:
            return self._transfer_exists(t, s.transfers[t.id])
        if t.id in self.orphaned:
            return TR.ID_ALREADY_FAILED
        if t.flags & (TF.POST_PENDING_TRANSFER | TF.VOID_PENDING_TRANSFER):
            return self._post_or_void(t)

        if t.debit_account_id == 0:
            return TR.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if t.debit_account_id == U128_MAX:
            return TR.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
        if t.credit_account_id == 0:
            return TR.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if t.credit_account_id == U128_MAX:
            return TR.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
        if t.credit_account_id == t.debit_account_id:
            return TR.ACCOUNTS_MUST_BE_DIFFERENT
        if t.pending_id != 0:
            return TR.PENDING_ID_MUST_BE_ZERO
        if not t.flags & TF.PENDING:
            if t.timeout != 0:
                return TR.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
            if t.flags & (TF.CLOSING_DEBIT | TF.CLOSING_CREDIT):
                return TR.CLOSING_TRANSFER_MUST_BE_PENDING
        if t.ledger == 0:
            return TR.LEDGER_MUST_NOT_BE_ZERO
        if t.code == 0:
            return TR.CODE_MUST_NOT_BE_ZERO
        dr = s.accounts.get(t.debit_account_id)
        if dr is None:
            return TR.DEBIT_ACCOUNT_NOT_FOUND
        cr = s.accounts.get(t.credit_account_id)
        if cr is None:
            return TR.CREDIT_ACCOUNT_NOT_FOUND
        if dr.ledger != cr.ledger:
            return TR.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
        if t.ledger != dr.ledger:
            return TR.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
        if dr.flags & CLOSED:
            return TR.DEBIT_ACCOUNT_ALREADY_CLOSED
        if cr.flags & CLOSED:
            return TR.CREDIT_ACCOUNT_ALREADY_CLOSED

        # 3.4.1 balancing clamp: debit side first, then credit side; may reach 0.
        amount = t.amount
        if t.flags & TF.BALANCING_DEBIT:
            headroom = dr.credits_posted - (dr.debits_posted + dr.debits_pending)
            amount = min(amount, max(0, headroom))
        if t.flags & TF.BALANCING_CREDIT:
            headroom = cr.debits_posted - (cr.credits_posted + cr.credits_pending)
            amount = min(amount, max(0, headroom))

        if t.flags & TF.PENDING:
            if amount + dr.debits_pending > U128_MAX:
                return TR.OVERFLOWS_DEBITS_PENDING
            if amount + cr.credits_pending > U128_MAX:
                return TR.OVERFLOWS_CREDITS_PENDING
        if amount + dr.debits_posted > U128_MAX:
            return TR.OVERFLOWS_DEBITS_POSTED
        if amount + cr.credits_posted > U128_MAX:
            return TR.OVERFLOWS_CREDITS_POSTED
        dr_debits = dr.debits_pending + dr.debits_posted
        cr_credits = cr.credits_pending + cr.credits_posted
        if amount + dr_debits > U128_MAX:
            return TR.OVERFLOWS_DEBITS
        if amount + cr_credits > U128_MAX:
            return TR.OVERFLOWS_CREDITS
        if t.timestamp + t.timeout * NS_PER_S > TIMESTAMP_MAX:
            return TR.OVERFLOWS_TIMEOUT
        # Limits count pending on the own side but only *_posted on the other side.
        if dr.flags & DR_LIMIT and dr_debits + amount > dr.credits_posted:
            return TR.EXCEEDS_CREDITS
        if cr.flags & CR_LIMIT and cr_credits + amount > cr.debits_posted:
            return TR.EXCEEDS_DEBITS

        # success
        s.transfers[t.id] = dataclasses.replace(t, amount=amount)
        if t.flags & TF.PENDING:
            dr.debits_pending += amount
            cr.credits_pending += amount
            s.pending_status[t.id] = "pending"
        else:
            dr.debits_posted += amount
            cr.credits_posted += amount
        if t.flags & TF.CLOSING_DEBIT:
            dr.flags |= CLOSED
        if t.flags & TF.CLOSING_CREDIT:
            cr.flags |= CLOSED
        s.history[t.timestamp] = {a.id: _balance(a, t.timestamp) for a in (dr, cr)}
        return TR.OK

    # -------------------------------------------------- post / void (3.5)

    def _post_or_void(self, t: Transfer) -> CreateTransferResult:
        s = self.state
        is_post = t.flags & TF.POST_PENDING_TRANSFER != 0
        is_void = t.flags & TF.VOID_PENDING_TRANSFER != 0
        if (is_post and is_void) or t.flags & NOT_WITH_POST_OR_VOID:
            return TR.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if t.pending_id == 0:
            return TR.PENDING_ID_MUST_NOT_BE_ZERO
        if t.pending_id == U128_MAX:
            return TR.PENDING_ID_MUST_NOT_BE_INT_MAX
        if t.pending_id == t.id:
            return TR.PENDING_ID_MUST_BE_DIFFERENT
        if t.timeout != 0:
            return TR.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        p = s.transfers.get(t.pending_id)  # orphaned ids are never in s.transfers
        if p is None:
            return TR.PENDING_TRANSFER_NOT_FOUND
        if not p.flags & TF.PENDING:
            return TR.PENDING_TRANSFER_NOT_PENDING
        dr = s.accounts[p.debit_account_id]
        cr = s.accounts[p.credit_account_id]
        if t.debit_account_id > 0 and t.debit_account_id != p.debit_account_id:
            return TR.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id > 0 and t.credit_account_id != p.credit_account_id:
            return TR.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.ledger > 0 and t.ledger != p.ledger:
            return TR.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
        if t.code > 0 and t.code != p.code:
            return TR.PENDING_TRANSFER_HAS_DIFFERENT_CODE
        if is_void:
            amount = p.amount if t.amount == 0 else t.amount
        else:
            amount = p.amount if t.amount == U128_MAX else t.amount
        if amount > p.amount:
            return TR.EXCEEDS_PENDING_TRANSFER_AMOUNT
        if is_void and amount < p.amount:
            return TR.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        status = s.pending_status[p.id]
        if status == "posted":
            return TR.PENDING_TRANSFER_ALREADY_POSTED
        if status == "voided":
            return TR.PENDING_TRANSFER_ALREADY_VOIDED
        if status == "expired":
            return TR.PENDING_TRANSFER_EXPIRED
        if p.timeout != 0 and p.timestamp + p.timeout * NS_PER_S <= t.timestamp:
            return TR.PENDING_TRANSFER_EXPIRED
        if dr.flags & CLOSED and not is_void:
            return TR.DEBIT_ACCOUNT_ALREADY_CLOSED
        if cr.flags & CLOSED and not is_void:
            return TR.CREDIT_ACCOUNT_ALREADY_CLOSED

        # success
        s.transfers[t.id] = dataclasses.replace(
            t,
            debit_account_id=p.debit_account_id,
            credit_account_id=p.credit_account_id,
            **{name: getattr(t, name) or getattr(p, name) for name in USER_DATA},
            ledger=p.ledger,
            code=p.code,
            timeout=0,
            amount=amount,
        )
        self._release(p, "posted" if is_post else "voided")
        if is_post:
            dr.debits_posted += amount
            cr.credits_posted += amount
        s.history[t.timestamp] = {a.id: _balance(a, t.timestamp) for a in (dr, cr)}
        return TR.OK

    # ----------------------------------------------- idempotency (3.4.2, 3.5.1)

    def _transfer_exists(self, t: Transfer, e: Transfer) -> CreateTransferResult:
        if t.flags != e.flags:
            return TR.EXISTS_WITH_DIFFERENT_FLAGS
        if t.pending_id != e.pending_id:
            return TR.EXISTS_WITH_DIFFERENT_PENDING_ID
        if t.timeout != e.timeout:
            return TR.EXISTS_WITH_DIFFERENT_TIMEOUT
        if t.flags & (TF.POST_PENDING_TRANSFER | TF.VOID_PENDING_TRANSFER):
            p = self.state.transfers[t.pending_id]
            if t.debit_account_id != 0 and t.debit_account_id != e.debit_account_id:
                return TR.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
            if t.credit_account_id != 0 and t.credit_account_id != e.credit_account_id:
                return TR.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
            full = 0 if t.flags & TF.VOID_PENDING_TRANSFER else U128_MAX
            expected = p.amount if t.amount == full else t.amount
            if e.amount != expected:
                return TR.EXISTS_WITH_DIFFERENT_AMOUNT
            for name in USER_DATA:
                expected = getattr(t, name) or getattr(p, name)
                if getattr(e, name) != expected:
                    return CreateTransferResult[f"EXISTS_WITH_DIFFERENT_{name.upper()}"]
            if t.ledger != 0 and t.ledger != e.ledger:
                return TR.EXISTS_WITH_DIFFERENT_LEDGER
            if t.code != 0 and t.code != e.code:
                return TR.EXISTS_WITH_DIFFERENT_CODE
            return TR.EXISTS
        if t.debit_account_id != e.debit_account_id:
            return TR.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id != e.credit_account_id:
            return TR.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.flags & (TF.BALANCING_DEBIT | TF.BALANCING_CREDIT):
            if t.amount < e.amount:
                return TR.EXISTS_WITH_DIFFERENT_AMOUNT
        elif t.amount != e.amount:
            return TR.EXISTS_WITH_DIFFERENT_AMOUNT
        for name in (*USER_DATA, "ledger", "code"):
            if getattr(t, name) != getattr(e, name):
                return CreateTransferResult[f"EXISTS_WITH_DIFFERENT_{name.upper()}"]
        return TR.EXISTS

    # ------------------------------------------------------------ lookups (4.1)

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        return [Account(**vars(self.state.accounts[i])) for i in ids if i in self.state.accounts]

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        return [self.state.transfers[i] for i in ids if i in self.state.transfers]

    # ------------------------------------------------------------ queries (4.2, 4.3)

    def get_account_transfers(self, query: AccountFilter) -> list[Transfer]:
        f = query
        valid = (
            f.account_id not in (0, U128_MAX)
            and f.timestamp_min <= TIMESTAMP_MAX
            and f.timestamp_max <= TIMESTAMP_MAX
            and (f.timestamp_max == 0 or f.timestamp_min <= f.timestamp_max)
            and f.limit != 0
            and f.flags & (AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS) != 0
            and f.flags & ~FILTER_FLAGS_MASK == 0
        )
        if not valid:
            return []
        ts_min = f.timestamp_min or 1
        ts_max = f.timestamp_max or TIMESTAMP_MAX
        matches = []
        for t in self.state.transfers.values():
            is_dr = f.flags & AccountFilterFlags.DEBITS and t.debit_account_id == f.account_id
            is_cr = f.flags & AccountFilterFlags.CREDITS and t.credit_account_id == f.account_id
            if (is_dr or is_cr) and ts_min <= t.timestamp <= ts_max:
                matches.append(t)
        reverse = f.flags & AccountFilterFlags.REVERSED != 0
        matches.sort(key=lambda t: t.timestamp, reverse=reverse)
        return matches[: min(f.limit, BATCH_EVENTS_MAX)]

    def get_account_balances(self, query: AccountFilter) -> list[AccountBalance]:
        account = self.state.accounts.get(query.account_id)
        if account is None or not account.flags & AccountFlags.HISTORY:
            return []
        transfers = self.get_account_transfers(query)  # the same scan (4.3)
        return [self.state.history[t.timestamp][query.account_id] for t in transfers]
