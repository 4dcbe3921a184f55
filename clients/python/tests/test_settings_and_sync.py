"""Settings from the CLI's environment variables, and the synchronous client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import raftq
import raftq.aio
from raftq import Message

from cluster import DevCluster


async def test_the_cli_variables_are_honoured(
    cluster: DevCluster, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    second, third = cluster.address(2), cluster.address(3)
    monkeypatch.setenv("RAFTQ_ADDR", f"{second}, {third}")
    monkeypatch.setenv("RAFTQ_CA_CERT", cluster.env["RAFTQ_CA_CERT"])
    monkeypatch.setenv("RAFTQ_TOKEN", cluster.env["RAFTQ_TOKEN"])
    monkeypatch.delenv("RAFTQ_TOKEN_FILE", raising=False)
    async with raftq.aio.Client() as client:
        assert client.settings.addresses == (second, third)
        assert client.settings.tls and client.settings.ca_cert == Path(cluster.env["RAFTQ_CA_CERT"])
        assert client.settings.token == cluster.env["RAFTQ_TOKEN"]
        await client.create_queue(queue_name)
        assert (await client.send(queue_name, b"via env")).sequence == 1


async def test_the_token_may_come_from_a_file(
    cluster: DevCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {cluster.env['RAFTQ_TOKEN']}\n")
    monkeypatch.setenv("RAFTQ_ADDR", cluster.env["RAFTQ_ADDR"])
    monkeypatch.setenv("RAFTQ_CA_CERT", cluster.env["RAFTQ_CA_CERT"])
    monkeypatch.delenv("RAFTQ_TOKEN", raising=False)
    monkeypatch.setenv("RAFTQ_TOKEN_FILE", str(token_file))
    async with raftq.aio.Client() as client:
        assert client.settings.token == cluster.env["RAFTQ_TOKEN"]
        assert (await client.cluster_status()).leader_id != 0
    monkeypatch.setenv("RAFTQ_TOKEN", "both")
    with pytest.raises(raftq.ConfigurationError, match="not both"):
        raftq.Settings.from_env()


async def test_without_a_ca_certificate_the_client_speaks_plaintext(cluster: DevCluster) -> None:
    settings = raftq.Settings.from_env(
        {"RAFTQ_ADDR": cluster.env["RAFTQ_ADDR"], "RAFTQ_TOKEN": cluster.env["RAFTQ_TOKEN"]}
    ).replace(retry_deadline=1.0, attempt_timeout=0.5)
    assert not settings.tls
    assert settings.addresses == tuple(cluster.env["RAFTQ_ADDR"].split(","))
    async with raftq.aio.Client(settings) as plaintext:
        # The TLS cluster does not answer plaintext: retries run out.
        with pytest.raises(raftq.Unavailable) as raised:
            await plaintext.cluster_status()
    assert raised.value.outcome_unknown and raised.value.attempts > 1


def test_the_default_address_is_the_clis() -> None:
    assert raftq.Settings.from_env({}).addresses == ("127.0.0.1:7401",)
    with pytest.raises(raftq.ConfigurationError):
        raftq.Settings(addresses=())


def test_the_synchronous_client_makes_every_kind_of_call(
    cluster: DevCluster, queue_name: str
) -> None:
    target = f"{queue_name}-target"
    with raftq.Client(cluster.settings()) as client:
        client.create_queue(queue_name)
        client.create_queue(target)
        assert client.send(queue_name, Message(body=b"first", key="k")).sequence == 1
        assert client.send(queue_name, Message(body=b"first", key="k")).duplicate
        client.send_batch(queue_name, [b"second", b"third", b"fourth"])
        [first] = client.receive(queue_name)
        assert first.body == b"first"
        assert client.ack(queue_name, first.receipt) is False

        seen: list[bytes] = []
        failed: list[int] = []
        with client.consume(queue_name, prefetch=10) as consumer:
            for delivery in consumer:
                fail = delivery.body == b"second" and delivery.attempt == 1
                try:
                    with delivery.process():
                        if fail:
                            raise KeyError("fails once")
                        seen.append(delivery.body)
                except KeyError:
                    assert fail
                    failed.append(delivery.message_id)
                if len(seen) == 3:
                    break
        assert sorted(seen) == [b"fourth", b"second", b"third"] and len(failed) == 1

        client.send(queue_name, b"to move")
        with client.transaction() as tx:
            [message] = tx.receive(queue_name, wait=1.0)
            tx.send(target, message.body)
        assert tx.result is not None and len(tx.result.sent) == 1
        assert [m.body for m in client.peek(target)] == [b"to move"]

        with pytest.raises(raftq.NotFound):
            client.get_queue(f"{queue_name}-missing")
        assert client.cluster_status().leader_id != 0
        assert client.purge_queue(target) == 1


def test_the_synchronous_client_refuses_calls_once_closed(cluster: DevCluster) -> None:
    client = raftq.Client(cluster.settings())
    client.close()
    with pytest.raises(raftq.RaftqError):
        client.cluster_status()


async def test_a_closed_async_client_refuses_calls(cluster: DevCluster) -> None:
    client = raftq.aio.Client(cluster.settings())
    await client.close()
    with pytest.raises(raftq.ConfigurationError, match="closed"):
        await asyncio.wait_for(client.cluster_status(), 5)
