"""Every call of the asyncio client against the real cluster."""

from __future__ import annotations

import asyncio

import grpc
import pytest

import raftq
import raftq.aio
from raftq import Message, MessageProperties, OverflowPolicy, QueueOptions

from cluster import DevCluster


async def test_send_and_receive_carry_every_message_option(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    properties = MessageProperties(
        label="order", correlation_id="c-1", reply_to=queue_name, content_type="text/plain"
    )
    sent = await client.send(
        queue_name,
        Message(
            body="héllo",
            headers={"tenant": "acme", "kind": "order"},
            key="order-1",
            group="customer-7",
            priority=5,
            ttl=600,
            properties=properties,
            time_to_reach=60,
        ),
    )
    assert sent.message_id > 0 and sent.sequence == 1
    assert not sent.duplicate and not sent.expired

    [message] = await client.receive(queue_name, 10, lease=30)
    assert message.message_id == sent.message_id
    assert message.body == "héllo".encode()
    assert message.headers == {"tenant": "acme", "kind": "order"}
    assert message.group == "customer-7"
    assert message.priority == 5
    assert message.properties == properties
    assert message.attempt == 1
    assert message.receipt == f"{sent.message_id}:1"
    assert message.expires_at_ms > message.enqueued_at_ms
    assert message.lease_expires_at_ms > message.enqueued_at_ms


async def test_a_send_repeated_with_its_key_is_stored_once(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    first = await client.send(queue_name, Message(body=b"once", key="k-1"))
    again = await client.send(queue_name, Message(body=b"once", key="k-1"))
    assert again.duplicate and not first.duplicate
    assert again.message_id == first.message_id
    assert (await client.get_queue(queue_name)).stats.depth == 1


async def test_priority_and_delay_order_what_is_handed_out(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    await client.send(queue_name, Message(body=b"low"))
    await client.send(queue_name, Message(body=b"high", priority=7))
    await client.send(queue_name, Message(body=b"later", priority=7, delay=1.0))
    [peeked_later] = [m for m in await client.peek(queue_name) if m.body == b"later"]
    assert peeked_later.state == "delayed"
    bodies = [m.body for m in await client.receive(queue_name, 10)]
    assert bodies == [b"high", b"low"]
    [later] = await client.receive(queue_name, 10, wait=5.0)
    assert later.body == b"later"


async def test_send_batch_stores_every_message_in_order_with_its_options(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    results = await client.send_batch(
        queue_name,
        [
            b"plain",
            "text",
            Message(body=b"keyed", key="batch-key", headers={"h": "1"}),
            Message(body=b"grouped", group="g", priority=3),
        ],
    )
    assert [r.sequence for r in results] == [1, 2, 3, 4]
    again = await client.send_batch(queue_name, [Message(body=b"keyed", key="batch-key")])
    assert again[0].duplicate and again[0].message_id == results[2].message_id
    peeked = await client.peek(queue_name, max_messages=10)
    assert [m.body for m in peeked] == [b"plain", b"text", b"keyed", b"grouped"]
    assert peeked[2].headers == {"h": "1"}
    assert peeked[3].group == "g" and peeked[3].priority == 3


async def test_acknowledgement_messages_reach_the_ack_queue(
    client: raftq.aio.Client, queue_name: str
) -> None:
    acks = f"{queue_name}-acks"
    await client.create_queue(queue_name)
    await client.create_queue(acks)
    sent = await client.send(
        queue_name,
        Message(body=b"tracked", ack_queue=acks, ack_positive=True, ack_negative=True),
    )
    [message] = await client.receive(queue_name)
    assert await client.ack(queue_name, message.receipt) is False
    [ack] = await client.receive(acks, wait=5.0)
    assert ack.headers["raftq-ack-kind"] == "consumed"
    assert ack.properties.correlation_id == str(sent.message_id)


async def test_ack_removes_the_message_and_a_repeat_is_already_acked(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    await client.send(queue_name, b"m")
    [message] = await client.receive(queue_name)
    assert await client.ack(queue_name, message.receipt) is False
    assert await client.ack(queue_name, message.receipt) is True
    assert (await client.get_queue(queue_name)).stats.depth == 0


async def test_ack_batch_judges_each_receipt_on_its_own(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    await client.send_batch(queue_name, [b"a", b"b", b"c"])
    messages = await client.receive(queue_name, 3)
    await client.nack(queue_name, messages[2].receipt)
    results = await client.ack_batch(queue_name, [m.receipt for m in messages])
    assert [r.ok for r in results] == [True, True, False]
    assert results[2].code == grpc.StatusCode.FAILED_PRECONDITION
    assert results[2].receipt == messages[2].receipt and results[2].error
    with pytest.raises(raftq.FailedPrecondition):
        results[2].raise_for_error()


async def test_ack_and_receive_acks_one_batch_and_takes_the_next(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    await client.send_batch(queue_name, [b"1", b"2", b"3", b"4"])
    first = await client.receive(queue_name, 2)
    results, second = await client.ack_and_receive(queue_name, [m.receipt for m in first], 2)
    assert all(r.ok and not r.already_acked for r in results)
    assert [m.body for m in second] == [b"3", b"4"]
    assert (await client.get_queue(queue_name)).stats.depth == 2


async def test_nack_with_a_delay_hides_the_message_then_redelivers_it(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    await client.send(queue_name, b"again")
    [first] = await client.receive(queue_name)
    visible_at = await client.nack(queue_name, first.receipt, delay=1.0)
    assert visible_at >= first.enqueued_at_ms + 1000
    [peeked] = await client.peek(queue_name)
    assert peeked.state == "delayed"
    assert await client.receive(queue_name) == []
    [second] = await client.receive(queue_name, wait=5.0)
    assert second.message_id == first.message_id and second.attempt == 2


async def test_extend_lease_keeps_the_message_leased_longer(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    await client.send(queue_name, b"slow work")
    [message] = await client.receive(queue_name, lease=1.0)
    expires = await client.extend_lease(queue_name, message.receipt, 60.0)
    assert expires >= message.lease_expires_at_ms + 55_000
    # The original one-second lease would have ended; the extended one has not.
    assert await client.receive(queue_name, wait=1.5) == []
    assert await client.ack(queue_name, message.receipt) is False


async def test_reject_dead_letters_and_redrive_brings_the_message_back(
    client: raftq.aio.Client, queue_name: str
) -> None:
    dlq = f"{queue_name}-dlq"
    await client.create_queue(queue_name, QueueOptions(dead_letter_queue=dlq))
    sent = await client.send(queue_name, b"poison")
    [message] = await client.receive(queue_name)
    assert await client.reject(queue_name, message.receipt, "cannot parse") is True
    [dead] = await client.peek(dlq)
    assert dead.message_id == sent.message_id
    assert dead.headers["raftq-dead-letter-reason"] == "rejected"
    assert dead.headers["raftq-dead-letter-detail"] == "cannot parse"
    assert dead.headers["raftq-dead-letter-source"] == queue_name

    assert await client.redrive(dlq, message_ids=[sent.message_id]) == 1
    assert await client.peek(dlq) == []
    [back] = await client.receive(queue_name)
    assert back.body == b"poison" and back.attempt == 1
    assert "raftq-dead-letter-reason" not in back.headers
    with pytest.raises(raftq.NotFound):
        await client.redrive(dlq, message_ids=[sent.message_id])


async def test_redrive_by_count_moves_to_a_named_queue(
    client: raftq.aio.Client, queue_name: str
) -> None:
    dlq, target = f"{queue_name}-dlq", f"{queue_name}-target"
    await client.create_queue(queue_name, QueueOptions(dead_letter_queue=dlq, max_delivery_count=1))
    await client.create_queue(target)
    await client.send_batch(queue_name, [b"x", b"y"])
    for message in await client.receive(queue_name, 2):
        await client.nack(queue_name, message.receipt)
    assert [m.body for m in await client.peek(dlq)] == [b"x", b"y"]
    assert await client.redrive(dlq, max_messages=10, to=target) == 2
    assert [m.body for m in await client.peek(target)] == [b"x", b"y"]


async def test_peek_pages_through_a_queue_without_leasing(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    await client.send_batch(queue_name, [str(i) for i in range(25)])
    seen: list[bytes] = []
    after = 0
    while page := await client.peek(queue_name, after_sequence=after, max_messages=10):
        seen.extend(m.body for m in page)
        after = page[-1].sequence
    assert seen == [str(i).encode() for i in range(25)]
    head = await client.peek(queue_name)
    assert all(m.state == "ready" for m in head)
    [selected] = await client.peek(queue_name, message_id=head[3].message_id)
    assert selected.body == b"3"
    # Nothing was leased: a receive gets the head.
    [first] = await client.receive(queue_name)
    assert first.body == b"0"


async def test_selective_receive_by_correlation_id(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    await client.send(queue_name, b"other")
    await client.send(
        queue_name, Message(body=b"answer", properties=MessageProperties(correlation_id="req-9"))
    )
    [answer] = await client.receive(queue_name, 10, correlation_id="req-9")
    assert answer.body == b"answer"


async def test_queues_are_created_with_every_option_listed_purged_and_deleted(
    client: raftq.aio.Client, queue_name: str
) -> None:
    options = QueueOptions(
        dedup_window_ms=60_000,
        default_lease_ms=5_000,
        max_delivery_count=3,
        max_message_bytes=2048,
        max_depth=100,
        dead_letter_queue=f"{queue_name}-dlq",
        dead_letter_expired=True,
        default_ttl_ms=3_600_000,
        max_bytes=1_000_000,
        overflow=OverflowPolicy.DEAD_LETTER_OLDEST,
        journal=True,
        journal_retention_ms=7_200_000,
        journal_max_messages=500,
    )
    created = await client.create_queue(queue_name, options)
    assert created.name == queue_name and created.options == options
    assert created.raft_group >= 1 and created.created_at_ms > 0
    assert (await client.get_queue(queue_name)).options == options
    with pytest.raises(raftq.AlreadyExists):
        await client.create_queue(queue_name)

    names = [queue.name for queue in await client.list_queues()]
    assert queue_name in names and names == sorted(names)
    page = await client.list_queues(after=queue_name, limit=1)
    assert len(page) <= 1 and all(queue.name > queue_name for queue in page)

    await client.send_batch(queue_name, [b"1", b"2", b"3"])
    assert (await client.get_queue(queue_name)).stats.depth == 3
    assert await client.purge_queue(queue_name) == 3
    assert (await client.get_queue(queue_name)).stats.depth == 0

    await client.delete_queue(queue_name)
    with pytest.raises(raftq.NotFound):
        await client.get_queue(queue_name)


async def test_cluster_status_names_the_leader_and_three_voters(
    client: raftq.aio.Client, cluster: DevCluster
) -> None:
    status = await client.cluster_status()
    assert status.leader_id in (1, 2, 3)
    assert status.leader_address == cluster.address(status.leader_id)
    assert sorted(node.node_id for node in status.nodes) == [1, 2, 3]
    assert all(node.voter for node in status.nodes)
    assert status.leader is not None and status.leader.role == "leader"
    assert status.cluster_id.startswith("dev-")


async def test_a_client_given_only_a_follower_learns_the_leader(
    client: raftq.aio.Client, cluster: DevCluster, queue_name: str
) -> None:
    leader = await cluster.leader(client)
    follower = next(node for node in (1, 2, 3) if node != leader)
    settings = cluster.settings(addresses=(cluster.address(follower),))
    async with raftq.aio.Client(settings) as by_follower:
        await by_follower.create_queue(queue_name)
        await by_follower.send(queue_name, b"forwarded")
        # The follower forwarded the send and named the leader: the next call goes there.
        assert by_follower.leader_for(queue_name) == cluster.address(leader)
        [message] = await by_follower.receive(queue_name)
        assert message.body == b"forwarded"


async def test_a_long_poll_waits_for_a_message_sent_meanwhile(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    waiting = asyncio.create_task(client.receive(queue_name, wait=10.0))
    # Give the long poll time to reach the leader; it must still be waiting then.
    await asyncio.sleep(0.5)
    assert not waiting.done()
    await client.send(queue_name, b"late")
    [message] = await asyncio.wait_for(waiting, 10)
    assert message.body == b"late"
