"""The leader killed with SIGKILL while a client sends, consumes and commits.

Each test kills whichever node leads at that moment, mid-way through its work, and checks
that the work finished at the new leader with every message exactly once. The ``failover``
fixture starts the killed node again afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import raftq
import raftq.aio
from raftq import Message

from cluster import DevCluster, wait_for


async def _kill_leader_once(
    cluster: DevCluster, client: raftq.aio.Client, progress: list[int], at: int, of: int
) -> int:
    """Waits until ``progress[0]`` reaches ``at``, then SIGKILLs the leader and checks
    that the work (``of`` messages) was not finished yet; the killed node's id."""

    async def reached() -> bool:
        return progress[0] >= at

    await wait_for(reached, f"{at} messages of progress", timeout=120, interval=0.005)
    leader = await cluster.leader(client)
    await asyncio.to_thread(cluster.kill, leader)
    assert progress[0] < of, f"the leader was killed mid-way, not after all {of} messages"
    return leader


async def _all_bodies(client: raftq.aio.Client, queue: str) -> list[bytes]:
    """Every stored message's body, in send order."""
    bodies: list[bytes] = []
    after = 0
    while page := await client.peek(queue, after_sequence=after, max_messages=1000):
        bodies.extend(message.body for message in page)
        after = page[-1].sequence
    return bodies


async def test_5000_sends_are_each_stored_once_in_order_though_the_leader_is_killed(
    failover: DevCluster, client: raftq.aio.Client, queue_name: str
) -> None:
    count = 5000
    await client.create_queue(queue_name)
    progress = [0]
    duplicates = 0

    async def send_all() -> None:
        nonlocal duplicates
        for i in range(count):
            result = await client.send(queue_name, f"{i:05d}".encode())
            duplicates += result.duplicate
            progress[0] = i + 1

    killed, _ = await asyncio.gather(
        _kill_leader_once(failover, client, progress, count // 3, count), send_all()
    )
    status = await client.cluster_status()
    assert status.leader_id not in (0, killed), "a new leader took over"
    assert await _all_bodies(client, queue_name) == [f"{i:05d}".encode() for i in range(count)]
    queue = await client.get_queue(queue_name)
    assert queue.stats.depth == count and queue.stats.total_sent == count
    # A send whose answer the kill lost was stored once: its retry was a duplicate, or it
    # had not been stored and the retry stored it.
    assert duplicates <= 1


async def test_a_consumer_processes_each_message_once_in_order_though_the_leader_is_killed(
    failover: DevCluster, client: raftq.aio.Client, queue_name: str
) -> None:
    # One message group: the cluster hands its messages out in send order, one at a time,
    # and keeps to that across a change of leader, so order is promised even for a
    # delivery whose answer the kill lost (it comes back when its lease ends).
    count = 400
    await client.create_queue(queue_name)
    expected = [f"{i:04d}".encode() for i in range(count)]
    for start in range(0, count, 200):
        await client.send_batch(
            queue_name, [Message(body=body, group="g") for body in expected[start : start + 200]]
        )
    processed: list[bytes] = []
    progress = [0]

    async def consume_all() -> None:
        async with client.consume(queue_name, prefetch=100, lease=8.0) as consumer:
            async for delivery in consumer:
                async with delivery.process():
                    processed.append(delivery.body)
                    progress[0] = len(processed)
                if len(processed) >= count:
                    break

    started = time.monotonic()
    killed, _ = await asyncio.wait_for(
        asyncio.gather(
            _kill_leader_once(failover, client, progress, count // 4, count), consume_all()
        ),
        timeout=90,
    )
    assert (await client.cluster_status()).leader_id not in (0, killed)
    twice = [body for body, seen in Counter(processed).items() if seen > 1]
    assert not twice, f"processed more than once: {twice}"
    assert processed == expected, "every message once, in send order"

    async def all_acknowledged() -> bool:
        stats = (await client.get_queue(queue_name)).stats
        return stats.depth == 0 and stats.total_acked == count

    await wait_for(all_acknowledged, "every message to be acknowledged", timeout=30)
    assert time.monotonic() - started < 90


async def test_an_ungrouped_consumer_acknowledges_each_message_once_though_the_leader_is_killed(
    failover: DevCluster, client: raftq.aio.Client, queue_name: str
) -> None:
    # Without a group the prefetch is full, and deliveries the killed leader handed out but
    # never answered come back after their (short) lease, out of their place; the acks
    # not answered go again on the new stream, so nothing is acknowledged twice.
    count = 2000
    await client.create_queue(queue_name)
    expected = [f"{i:05d}".encode() for i in range(count)]
    for start in range(0, count, 500):
        await client.send_batch(queue_name, expected[start : start + 500])
    processed: Counter[bytes] = Counter()
    progress = [0]

    async def consume_all() -> None:
        async with client.consume(queue_name, prefetch=200, lease=4.0) as consumer:
            async for delivery in consumer:
                async with delivery.process():
                    processed[delivery.body] += 1
                    progress[0] = len(processed)
                if len(processed) >= count:
                    break

    await asyncio.wait_for(
        asyncio.gather(
            _kill_leader_once(failover, client, progress, count // 4, count), consume_all()
        ),
        timeout=90,
    )
    assert set(processed) == set(expected)
    twice = [body for body, seen in processed.items() if seen > 1]
    assert not twice, f"processed more than once: {twice}"

    async def all_acknowledged() -> bool:
        stats = (await client.get_queue(queue_name)).stats
        return stats.depth == 0 and stats.total_acked == count

    await wait_for(all_acknowledged, "every message to be acknowledged once", timeout=30)


async def test_transactions_move_each_message_once_though_the_leader_is_killed(
    failover: DevCluster, client: raftq.aio.Client, queue_name: str
) -> None:
    count = 300
    source, target = f"{queue_name}-src", f"{queue_name}-dst"
    await client.create_queue(source)
    await client.create_queue(target)
    expected = [f"{i:04d}".encode() for i in range(count)]
    await client.send_batch(source, expected)
    progress = [0]
    failed_commits = 0

    async def move_all() -> None:
        nonlocal failed_commits
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                async with client.transaction() as tx:
                    for message in await tx.receive(source, 10, wait=0.2, lease=5.0):
                        tx.send(target, Message(body=message.body, headers={"moved": "yes"}))
            except (raftq.FailedPrecondition, raftq.Unavailable):
                # Refused (a lease ended) or given up on: its messages come back.
                failed_commits += 1
                continue
            if tx.result is not None:
                progress[0] += len(tx.result.sent)
            if tx.empty:
                source_queue = await client.get_queue(source)
                target_queue = await client.get_queue(target)
                if source_queue.stats.depth == 0 and target_queue.stats.depth >= count:
                    return
        raise AssertionError(f"not all moved in time: {progress[0]} of {count}")

    killed, _ = await asyncio.gather(
        _kill_leader_once(failover, client, progress, count // 3, count), move_all()
    )
    assert (await client.cluster_status()).leader_id not in (0, killed)
    moved = await _all_bodies(client, target)
    twice = [body for body, seen in Counter(moved).items() if seen > 1]
    assert not twice, f"moved more than once: {twice}"
    assert sorted(moved) == expected
    assert (await client.get_queue(source)).stats.depth == 0
    assert await client.peek(source) == []
