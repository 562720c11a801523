"""Read-your-writes: a client's reads are answered from FINAL state at least as high as
any FINAL answer it accepted, whichever replica answers (``aegis-min-height``).

Without it, a transfer acknowledged FINAL by one replica could be missing from a read
served a moment later by a replica still one block behind (a CI flake of
tests/node/test_client_async.py was exactly that)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import pytest

from ledger import Account
from node.client import Client, ClientError, lookup_body
from node.config import Tuning, init_cluster, load_node_config
from node.replica import serve
from node.service import HEIGHT_MAX, MIN_HEIGHT_METADATA, _Refused, min_height
from tests.node.test_service import Caller


def test_the_min_height_metadata_is_checked() -> None:
    assert min_height(None) == 0
    assert min_height((("other", "7"),)) == 0
    assert min_height(((MIN_HEIGHT_METADATA, "12"),)) == 12
    assert min_height(((MIN_HEIGHT_METADATA, str(HEIGHT_MAX)),)) == HEIGHT_MAX
    for bad in ("", "-1", "1.5", "x", "١٢", str(HEIGHT_MAX + 1)):
        with pytest.raises(_Refused) as refused:
            min_height(((MIN_HEIGHT_METADATA, bad),))
        assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert MIN_HEIGHT_METADATA in refused.value.details
    with pytest.raises(_Refused, match="one decimal height"):
        min_height(((MIN_HEIGHT_METADATA, "1"), (MIN_HEIGHT_METADATA, "2")))


def test_a_read_waits_for_the_height_the_client_saw_or_is_refused(tmp_path: Path) -> None:
    cluster = tmp_path / "c"
    init_cluster(cluster, replicas=4, tuning=Tuning(read_wait_ms_max=1_000))
    configs = [load_node_config(cluster / f"replica-{i}" / "node.toml") for i in range(4)]

    async def lookup(caller: Caller, ids: list[int], height: str) -> bytes:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = caller.channel.unary_unary(
            "/aegis.v1.Ledger/LookupAccounts"
        )
        metadata = ((MIN_HEIGHT_METADATA, height),)
        return await call(lookup_body(ids), timeout=10, metadata=metadata)

    async def test() -> None:
        stop = asyncio.Event()
        replicas = [asyncio.create_task(serve(config, stop)) for config in configs]
        caller = Caller(cluster, "client-0")
        try:
            await caller.call("aegis.v1.Admin", "Status", b"")  # replica 0 listens
            with Client.from_file(str(cluster / "client-0" / "client.toml"), 10) as app:
                first = [Account(id=i, ledger=1, code=1) for i in (1, 2)]
                done = await asyncio.to_thread(app.create_accounts, first)
                assert done.codes == (0, 0)
                assert app.checker.final_height == done.height >= 1
                assert app.checker.read_metadata() == ((MIN_HEIGHT_METADATA, str(done.height)),)
                assert len(await asyncio.to_thread(app.lookup_accounts, [1, 2, 3], 2)) == 2

                # A read asking for a height not decided yet waits for it.
                waiting = asyncio.create_task(lookup(caller, [1, 2, 3], str(done.height + 1)))
                await asyncio.sleep(0.2)
                assert not waiting.done()
                third = await asyncio.to_thread(
                    app.create_accounts, [Account(id=3, ledger=1, code=1)]
                )
                assert third.height == done.height + 1
                assert len(await waiting) == 3 * 128, "answered from the new height"

                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await lookup(caller, [1], "twelve")
                assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                # A height nobody holds: refused after the wait, naming both heights.
                far = done.height + 1_000
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await lookup(caller, [1], str(far))
                assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
                assert f"below the h{far} asked" in str(refused.value.details())
                # The client asks the next replica on UNAVAILABLE; none can answer.
                app.checker.final_height = far
                with pytest.raises(ClientError, match=f"replica 3 .* below the h{far} asked"):
                    await asyncio.to_thread(app.lookup_accounts, [1])
        finally:
            await caller.channel.close()
            stop.set()
            await asyncio.gather(*replicas)

    asyncio.run(asyncio.wait_for(test(), 120))
