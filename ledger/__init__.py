"""The double-entry ledger: TigerBeetle-style accounts and transfers.

A pure state machine (stdlib only, no IO, no clock, no randomness) that every
replica drives with the same ordered batches and timestamps, and so reaches
the same state and the same ``state_hash()``.
"""

from ledger.codec import (
    DecodeError,
    decode_account,
    decode_accounts,
    decode_transfer,
    decode_transfers,
    encode_account,
    encode_accounts,
    encode_transfer,
    encode_transfers,
)
from ledger.results import TRANSIENT_TRANSFER_RESULTS, CreateAccountResult, CreateTransferResult
from ledger.snapshot import SnapshotError
from ledger.state_machine import TIMESTAMP_MAX, Ledger, LedgerError
from ledger.types import (
    BATCH_EVENTS_MAX,
    U128_MAX,
    Account,
    AccountBalance,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    RecordError,
    Transfer,
    TransferFlags,
)

__all__ = [
    "BATCH_EVENTS_MAX",
    "TIMESTAMP_MAX",
    "TRANSIENT_TRANSFER_RESULTS",
    "U128_MAX",
    "Account",
    "AccountBalance",
    "AccountFilter",
    "AccountFilterFlags",
    "AccountFlags",
    "CreateAccountResult",
    "CreateTransferResult",
    "DecodeError",
    "Ledger",
    "LedgerError",
    "RecordError",
    "SnapshotError",
    "Transfer",
    "TransferFlags",
    "decode_account",
    "decode_accounts",
    "decode_transfer",
    "decode_transfers",
    "encode_account",
    "encode_accounts",
    "encode_transfer",
    "encode_transfers",
]
