"""Consume streams: deliveries in order, ``process()`` settling them, closing."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import raftq
import raftq.aio
from raftq import Message, QueueOptions

from cluster import wait_for


class Boom(Exception):
    pass


class Poison(Exception):
    pass


async def test_a_consumer_gets_every_message_once_in_order_and_acks_it(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    bodies = [f"m{i:04d}".encode() for i in range(1000)]
    for start in range(0, len(bodies), 250):
        await client.send_batch(queue_name, bodies[start : start + 250])
    seen: list[bytes] = []
    async with client.consume(queue_name, prefetch=100, max_messages=50) as consumer:
        async for delivery in consumer:
            async with delivery.process():
                seen.append(delivery.body)
            assert delivery.settled
            if len(seen) == len(bodies):
                break
    assert seen == bodies

    async def empty() -> bool:
        stats = (await client.get_queue(queue_name)).stats
        return stats.depth == 0 and stats.total_acked == len(bodies)

    await wait_for(empty, "every message to be acknowledged")


async def test_process_nacks_on_an_exception_which_propagates(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    await client.send(queue_name, b"fails once")
    async with client.consume(queue_name, prefetch=10) as consumer:
        first = await anext(consumer)
        with pytest.raises(Boom):
            async with first.process(nack_delay=2.0):
                raise Boom("not yet")
        assert first.settled and first.attempt == 1

        async def delayed() -> bool:
            [peeked] = await client.peek(queue_name)
            return peeked.state == "delayed"

        # Handed back with a delay: hidden until it ends.
        await wait_for(
            delayed, "the message to be handed back with a delay", timeout=1.5, interval=0.02
        )
        second = await asyncio.wait_for(anext(consumer), 10)
        assert second.message_id == first.message_id
        assert second.attempt == 2 and second.body == b"fails once"
        async with second.process():
            pass
    await wait_for(
        lambda: _depth_is(client, queue_name, 0), "the redelivered message to be acknowledged"
    )


async def test_process_rejects_on_the_named_exceptions(
    client: raftq.aio.Client, queue_name: str
) -> None:
    dlq = f"{queue_name}-dlq"
    await client.create_queue(queue_name, QueueOptions(dead_letter_queue=dlq))
    await client.send(queue_name, b"cannot be read")
    async with client.consume(queue_name) as consumer:
        delivery = await anext(consumer)
        with pytest.raises(Poison):
            async with delivery.process(reject_on=(Poison,)):
                raise Poison("bad format")
    [dead] = await client.peek(dlq)
    assert dead.body == b"cannot be read"
    assert dead.headers["raftq-dead-letter-reason"] == "rejected"
    assert dead.headers["raftq-dead-letter-detail"] == "Poison: bad format"


async def test_acks_can_wait_for_their_result(client: raftq.aio.Client, queue_name: str) -> None:
    await client.create_queue(queue_name)
    await client.send_batch(queue_name, [b"a", b"b"])
    async with client.consume(queue_name) as consumer:
        a = await anext(consumer)
        result = await a.ack(wait=True)
        assert result is not None and result.ok and not result.already_acked
        b = await anext(consumer)
        nacked = await b.nack(wait=True)
        assert nacked is not None and nacked.ok
        with pytest.raises(raftq.RaftqError, match="settled already"):
            await b.ack()
        again = await anext(consumer)
        assert again.body == b"b" and again.attempt == 2
        await again.ack(wait=True)


async def test_a_late_ack_after_the_lease_ended_fails_with_failed_precondition(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    await client.send(queue_name, b"slow")
    async with client.consume(queue_name, lease=1.0) as consumer:
        first = await anext(consumer)
        # The lease ends and the stream hands the message out again.
        second = await asyncio.wait_for(anext(consumer), 10)
        assert second.attempt == 2
        with pytest.raises(raftq.FailedPrecondition):
            await first.ack(wait=True)
        await second.extend_lease(30)
        await second.ack(wait=True)


async def test_closing_a_consumer_hands_back_what_it_did_not_process(
    client: raftq.aio.Client, queue_name: str
) -> None:
    # Ten-minute leases: only the close can bring the messages back within the test.
    await client.create_queue(queue_name, QueueOptions(default_lease_ms=600_000))
    await client.send_batch(queue_name, [b"1", b"2", b"3", b"4"])
    consumer = client.consume(queue_name, prefetch=4)
    first = await anext(consumer)
    async with first.process():
        pass
    await consumer.close()
    with pytest.raises(StopAsyncIteration):
        await anext(consumer)

    async def back() -> list[bytes]:
        return [m.body for m in await client.receive(queue_name, 10)]

    assert await wait_for(back, "the unprocessed messages to be ready again") == [b"2", b"3", b"4"]


async def test_consuming_an_unknown_queue_raises_not_found(
    client: raftq.aio.Client, queue_name: str
) -> None:
    async with client.consume(queue_name) as consumer:
        with pytest.raises(raftq.NotFound) as raised:
            await asyncio.wait_for(anext(consumer), 10)
    assert raised.value.code == grpc.StatusCode.NOT_FOUND and queue_name in raised.value.message


async def test_a_group_is_consumed_one_message_at_a_time_in_order(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    await client.send_batch(
        queue_name, [Message(body=str(i).encode(), group="g") for i in range(20)]
    )
    seen: list[bytes] = []
    async with client.consume(queue_name, prefetch=100) as consumer:
        async for delivery in consumer:
            # One of the group in flight: nothing else is waiting in the prefetch.
            assert consumer.buffered == 0
            async with delivery.process():
                seen.append(delivery.body)
            if len(seen) == 20:
                break
    assert seen == [str(i).encode() for i in range(20)]


async def _depth_is(client: raftq.aio.Client, queue: str, depth: int) -> bool:
    return (await client.get_queue(queue)).stats.depth == depth
