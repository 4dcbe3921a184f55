"""Refusals raise the exception of their gRPC code, carrying the server's message."""

from __future__ import annotations

import grpc
import pytest

import raftq
import raftq.aio
from raftq import Message, QueueOptions

from cluster import DevCluster


async def test_an_unknown_queue_raises_not_found_with_the_servers_message(
    client: raftq.aio.Client, queue_name: str
) -> None:
    with pytest.raises(raftq.NotFound) as raised:
        await client.send(queue_name, b"nowhere")
    error = raised.value
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert queue_name in error.message
    assert str(error).startswith("NOT_FOUND: ")
    assert not error.outcome_unknown and error.attempts == 1
    with pytest.raises(raftq.NotFound):
        await client.get_queue(queue_name)
    with pytest.raises(raftq.NotFound):
        await client.delete_queue(queue_name)


async def test_an_empty_queue_name_raises_invalid_argument(client: raftq.aio.Client) -> None:
    with pytest.raises(raftq.InvalidArgument) as raised:
        await client.create_queue("")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message


async def test_a_bad_queue_name_raises_invalid_argument(client: raftq.aio.Client) -> None:
    with pytest.raises(raftq.InvalidArgument) as raised:
        await client.create_queue("-starts-with-a-dash")
    assert raised.value.message


async def test_an_oversized_message_raises_invalid_argument(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name, QueueOptions(max_message_bytes=1024))
    with pytest.raises(raftq.InvalidArgument) as raised:
        await client.send(queue_name, b"x" * 2048)
    assert raised.value.message
    assert (await client.get_queue(queue_name)).stats.depth == 0


async def test_a_priority_above_seven_raises_invalid_argument(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    with pytest.raises(raftq.InvalidArgument):
        await client.send(queue_name, Message(body=b"p", priority=8))


async def test_a_negative_time_is_refused_before_sending(
    client: raftq.aio.Client, queue_name: str
) -> None:
    with pytest.raises(raftq.InvalidArgument, match="delay must not be negative"):
        await client.send(queue_name, Message(body=b"p", delay=-1))


async def test_a_stale_receipt_raises_failed_precondition(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    await client.send(queue_name, b"m")
    [first] = await client.receive(queue_name)
    await client.nack(queue_name, first.receipt)
    [second] = await client.receive(queue_name)
    assert second.attempt == 2
    for call in (
        client.ack(queue_name, first.receipt),
        client.nack(queue_name, first.receipt),
        client.extend_lease(queue_name, first.receipt, 10),
        client.reject(queue_name, first.receipt),
    ):
        with pytest.raises(raftq.FailedPrecondition) as raised:
            await call
        assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert raised.value.message
    assert await client.ack(queue_name, second.receipt) is False


async def test_a_malformed_receipt_raises_invalid_argument(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name)
    with pytest.raises(raftq.InvalidArgument):
        await client.ack(queue_name, "not-a-receipt")


async def test_a_full_queue_raises_resource_exhausted(
    client: raftq.aio.Client, queue_name: str
) -> None:
    await client.create_queue(queue_name, QueueOptions(max_depth=2))
    await client.send_batch(queue_name, [b"1", b"2"])
    with pytest.raises(raftq.ResourceExhausted) as raised:
        await client.send(queue_name, b"3")
    assert raised.value.message


async def test_a_wrong_token_raises_unauthenticated(cluster: DevCluster) -> None:
    async with raftq.aio.Client(cluster.settings(token="not-the-token")) as stranger:
        with pytest.raises(raftq.Unauthenticated) as raised:
            await stranger.list_queues()
    assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_no_token_raises_unauthenticated(cluster: DevCluster) -> None:
    async with raftq.aio.Client(cluster.settings(token=None)) as anonymous:
        with pytest.raises(raftq.Unauthenticated):
            await anonymous.cluster_status()


async def test_every_error_is_a_raftq_error() -> None:
    for cls in (
        raftq.NotFound,
        raftq.InvalidArgument,
        raftq.AlreadyExists,
        raftq.FailedPrecondition,
        raftq.ResourceExhausted,
        raftq.Unavailable,
        raftq.Unauthenticated,
        raftq.PermissionDenied,
        raftq.DeadlineExceeded,
        raftq.ConfigurationError,
    ):
        assert issubclass(cls, raftq.RaftqError)
    assert raftq.Unavailable("x").code == grpc.StatusCode.UNAVAILABLE
    assert raftq.Unavailable("x").retryable and not raftq.NotFound("x").retryable


async def test_a_principal_without_a_grant_raises_permission_denied(
    client: raftq.aio.Client, cluster: DevCluster, queue_name: str
) -> None:
    name = f"app-{queue_name}"[:100]
    token = await client.create_principal(name)
    await client.create_queue(queue_name)
    granted = await client.grant(name, f"{queue_name}*", ["send"])
    assert granted.name == name
    assert granted.grants == (raftq.QueueGrant(queue=f"{queue_name}*", actions=("send",)),)
    assert name in [principal.name for principal in await client.list_principals()]

    async with raftq.aio.Client(cluster.settings(token=token)) as app:
        assert (await app.send(queue_name, b"allowed")).sequence == 1
        with pytest.raises(raftq.PermissionDenied) as raised:
            await app.receive(queue_name)
        assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert name in raised.value.message and queue_name in raised.value.message
        assert await client.revoke(name, f"{queue_name}*") is True
        with pytest.raises(raftq.PermissionDenied):
            await app.send(queue_name, b"no longer")
        await client.delete_principal(name)
        with pytest.raises(raftq.Unauthenticated):
            await app.send(queue_name, b"nobody")
    assert (await client.get_queue(queue_name)).stats.depth == 1
