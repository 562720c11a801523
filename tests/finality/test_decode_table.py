"""The process-wide table of decoded requests stays bounded in transfers, not only in
requests: every decoded Transfer is an object each full garbage collection walks."""

from __future__ import annotations

from finality import executor
from ledger import Transfer, encode_transfers


def _records(first_id: int, count: int) -> bytes:
    return encode_transfers(
        [
            Transfer(id=i, debit_account_id=1, credit_account_id=2, amount=1, ledger=1, code=1)
            for i in range(first_id, first_id + count)
        ]
    )


def test_the_table_holds_at_most_the_transfer_bound() -> None:
    per_request = 2_000
    requests = [_records(1 + n * per_request, per_request) for n in range(40)]  # 80,000
    for records in requests:
        decoded = executor._decode(records)
        assert [t.id for t in decoded][:1] == [int.from_bytes(records[:16], "little")]
        held = sum(len(v) for v in executor._decoded.values())
        assert held == executor._decoded_transfers[0] <= executor.DECODED_TRANSFERS_MAX
    # The latest requests are still answered from the table, as the same objects.
    assert executor._decode(requests[-1]) is executor._decode(requests[-1])
