"""Canonical encoding: TigerBeetle's layout, strict decoding, u128 edges."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import (
    BATCH_EVENTS_MAX,
    U128_MAX,
    Account,
    DecodeError,
    RecordError,
    Transfer,
    decode_account,
    decode_accounts,
    decode_transfer,
    decode_transfers,
    encode_account,
    encode_accounts,
    encode_transfer,
    encode_transfers,
)
from ledger.codec import decode_balance, encode_balance
from ledger.types import U16_MAX, U32_MAX, U64_MAX, AccountBalance

u128 = st.integers(0, U128_MAX)
u64 = st.integers(0, U64_MAX)
u32 = st.integers(0, U32_MAX)
u16 = st.integers(0, U16_MAX)

accounts = st.builds(
    Account, id=u128, debits_pending=u128, debits_posted=u128, credits_pending=u128,
    credits_posted=u128, user_data_128=u128, user_data_64=u64, user_data_32=u32,
    ledger=u32, code=u16, flags=st.sampled_from([0, 1, 2, 4, 8, 32, 0b101111]), timestamp=u64,
)  # fmt: skip
transfers = st.builds(
    Transfer, id=u128, debit_account_id=u128, credit_account_id=u128, amount=u128,
    pending_id=u128, user_data_128=u128, user_data_64=u64, user_data_32=u32, timeout=u32,
    ledger=u32, code=u16, flags=st.integers(0, 0xFF), timestamp=u64,
)  # fmt: skip


@given(accounts)
def test_account_round_trip(account: Account) -> None:
    data = encode_account(account)
    assert len(data) == 128
    assert decode_account(data) == account
    assert encode_account(decode_account(data)) == data


@given(transfers)
def test_transfer_round_trip(transfer: Transfer) -> None:
    data = encode_transfer(transfer)
    assert len(data) == 128
    assert decode_transfer(data) == transfer


def test_transfer_layout_matches_tigerbeetle_offsets() -> None:
    t = Transfer(id=1, debit_account_id=2, credit_account_id=3, amount=4, pending_id=5,
                 user_data_128=6, user_data_64=7, user_data_32=8, timeout=9, ledger=10,
                 code=11, flags=12, timestamp=13)  # fmt: skip
    data = encode_transfer(t)
    for offset, value in [(0, 1), (16, 2), (32, 3), (48, 4), (64, 5), (80, 6)]:
        assert int.from_bytes(data[offset : offset + 16], "little") == value
    assert struct.unpack_from("<QIIIHHQ", data, 96) == (7, 8, 9, 10, 11, 12, 13)


def test_account_layout_has_reserved_u32_at_108() -> None:
    data = bytearray(encode_account(Account(id=1, ledger=2, code=3, timestamp=4)))
    assert struct.unpack_from("<QIIIHHQ", data, 96) == (0, 0, 0, 2, 3, 0, 4)
    data[108] = 1
    with pytest.raises(DecodeError, match=r"account\[0\]\.reserved must be zero"):
        decode_account(bytes(data))


def test_u128_edges_round_trip() -> None:
    t = Transfer(id=U128_MAX, debit_account_id=1 << 64, credit_account_id=(1 << 64) - 1,
                 amount=U128_MAX, ledger=U32_MAX, code=U16_MAX, timestamp=U64_MAX)  # fmt: skip
    assert decode_transfer(encode_transfer(t)) == t


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"amount": U128_MAX + 1}, "Transfer.amount=.* is outside"),
        ({"amount": -1}, "Transfer.amount=-1 is outside"),
        ({"id": True}, "Transfer.id must be an int, got bool"),
        ({"ledger": U32_MAX + 1}, "Transfer.ledger"),
        ({"code": U16_MAX + 1}, "Transfer.code"),
        ({"timeout": 1.5}, "Transfer.timeout must be an int"),
    ],
)
def test_records_refuse_values_outside_their_width(fields: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"id": 1, "debit_account_id": 1, "credit_account_id": 2,
                                 "amount": 1, "ledger": 1, "code": 1}  # fmt: skip
    values.update(fields)
    with pytest.raises(RecordError, match=message):
        Transfer(**values)  # type: ignore[arg-type]


def test_unknown_flags_are_named() -> None:
    data = bytearray(encode_transfer(Transfer(id=1, debit_account_id=1, credit_account_id=2,
                                              amount=1, ledger=1, code=1)))  # fmt: skip
    data[118:120] = (1 << 8).to_bytes(2, "little")
    with pytest.raises(DecodeError, match=r"transfer\[0\]\.flags has unknown bits 0x0100"):
        decode_transfer(bytes(data))
    account = bytearray(encode_account(Account(id=1, ledger=1, code=1)))
    account[118:120] = (1 << 4).to_bytes(2, "little")
    with pytest.raises(DecodeError, match=r"account\[0\]\.flags has unknown bits 0x0010"):
        decode_account(bytes(account))


def test_batch_decoding_is_strict() -> None:
    one = encode_transfers([Transfer(id=1, debit_account_id=1, credit_account_id=2, amount=1,
                                     ledger=1, code=1)])  # fmt: skip
    assert len(decode_transfers(one * 3)) == 3
    with pytest.raises(DecodeError, match="not a multiple of 128"):
        decode_transfers(one + b"\x00")
    with pytest.raises(DecodeError, match="exceeds the limit of 8189"):
        decode_transfers(one * (BATCH_EVENTS_MAX + 1))
    bad = bytearray(one * 3)
    bad[2 * 128 + 119] = 0x80
    with pytest.raises(DecodeError, match=r"transfer\[2\]"):
        decode_transfers(bytes(bad))
    assert decode_accounts(encode_accounts([])) == []
    with pytest.raises(DecodeError, match="expected 128 bytes, got 127"):
        decode_account(bytes(127))


@given(st.builds(AccountBalance, debits_pending=u128, debits_posted=u128,
                 credits_pending=u128, credits_posted=u128, timestamp=u64))  # fmt: skip
def test_balance_round_trip(balance: AccountBalance) -> None:
    data = encode_balance(balance)
    assert decode_balance(data) == balance
    with pytest.raises(DecodeError, match="reserved"):
        decode_balance(data[:-1] + b"\x01")
