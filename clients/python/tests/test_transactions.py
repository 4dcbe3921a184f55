"""Transactions: commit on success, abort on an exception, all or nothing."""

from __future__ import annotations

import pytest

import raftq
import raftq.aio
from raftq import Message


class Stop(Exception):
    pass


async def test_a_transaction_moves_messages_between_queues_on_commit(
    client: raftq.aio.Client, queue_name: str
) -> None:
    source, target = f"{queue_name}-src", f"{queue_name}-dst"
    await client.create_queue(source)
    await client.create_queue(target)
    await client.send_batch(source, [b"a", b"b", b"c"])
    async with client.transaction() as tx:
        received = await tx.receive(source, 10, wait=1.0)
        for message in received:
            tx.send(target, Message(body=message.body.upper(), headers={"from": source}))
    assert tx.result is not None and not tx.result.already_committed
    assert len(tx.result.sent) == 3
    assert (await client.get_queue(source)).stats.depth == 0
    moved = await client.peek(target)
    assert [m.body for m in moved] == [b"A", b"B", b"C"]
    assert all(m.headers == {"from": source} for m in moved)


async def test_an_exception_aborts_sends_nothing_and_hands_messages_back(
    client: raftq.aio.Client, queue_name: str
) -> None:
    source, target = f"{queue_name}-src", f"{queue_name}-dst"
    # Ten-minute leases: only the abort can bring the message back within the test.
    await client.create_queue(source, raftq.QueueOptions(default_lease_ms=600_000))
    await client.create_queue(target)
    await client.send(source, b"kept")
    with pytest.raises(Stop):
        async with client.transaction() as tx:
            [message] = await tx.receive(source)
            tx.send(target, message.body)
            raise Stop
    assert tx.result is None
    assert await client.peek(target) == []
    [again] = await client.receive(source)
    assert again.body == b"kept" and again.attempt == 2


async def test_a_stale_receipt_refuses_the_whole_commit(
    client: raftq.aio.Client, queue_name: str
) -> None:
    source, target = f"{queue_name}-src", f"{queue_name}-dst"
    await client.create_queue(source)
    await client.create_queue(target)
    await client.send(source, b"taken twice")
    with pytest.raises(raftq.FailedPrecondition):
        async with client.transaction() as tx:
            [message] = await tx.receive(source)
            tx.send(target, b"derived")
            # Someone else makes the receipt stale before the commit.
            await client.nack(source, message.receipt)
    assert await client.peek(target) == []
    assert (await client.get_queue(source)).stats.depth == 1


async def test_a_retried_commit_is_applied_once(client: raftq.aio.Client, queue_name: str) -> None:
    await client.create_queue(queue_name)
    first = await client.commit("tx-retried-" + queue_name, sends=[(queue_name, b"once")])
    again = await client.commit("tx-retried-" + queue_name, sends=[(queue_name, b"once")])
    assert not first.already_committed and again.already_committed
    assert again.sent[0].message_id == first.sent[0].message_id
    assert (await client.get_queue(queue_name)).stats.depth == 1


async def test_an_explicit_abort_releases_at_once(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name, raftq.QueueOptions(default_lease_ms=600_000))
    await client.send(queue_name, b"x")
    tx = client.transaction()
    [message] = await tx.receive(queue_name)
    await tx.abort()
    with pytest.raises(raftq.RaftqError, match="finished"):
        tx.send(queue_name, b"too late")
    [again] = await client.receive(queue_name)
    assert again.message_id == message.message_id
