"""Queues in data groups led by different nodes: the client keeps each queue's leader.

A cluster of 3 nodes with 3 data groups places one queue in each group (a new queue goes
to the group holding the fewest), and each node first leads one group. Calls on each
queue must end up going straight to the leader of that queue's group.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

import raftq
import raftq.aio

from cluster import DevCluster, binary, free_base_port, wait_for

GROUPS = 3


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory, cluster: DevCluster) -> Iterator[DevCluster]:
    base = free_base_port(cluster.base_port + 10, 3)
    dev = DevCluster(
        binary(),
        tmp_path_factory.mktemp("raftq-dev-groups"),
        base,
        env={**os.environ, "RAFTQ_GROUPS__DATA_GROUPS": str(GROUPS)},
    )
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def group_client(grouped: DevCluster) -> AsyncIterator[raftq.aio.Client]:
    async with raftq.aio.Client(grouped.settings()) as client:

        async def groups_led() -> bool:
            status = await client.cluster_status()
            leaders = {
                replica.group_id
                for node in status.nodes
                for replica in node.replicas
                if replica.role == "leader" and replica.group_id != 1
            }
            return len(leaders) == GROUPS

        await wait_for(groups_led, "every data group to have a leader", timeout=60)
        yield client


async def _group_leader(client: raftq.aio.Client, cluster: DevCluster, group: int) -> str:
    status = await client.cluster_status()
    for node in status.nodes:
        for replica in node.replicas:
            if replica.group_id == group and replica.role == "leader":
                return cluster.address(node.node_id)
    raise AssertionError(f"group {group} has no leader")


async def test_each_queue_goes_to_the_leader_of_its_own_group(
    grouped: DevCluster, group_client: raftq.aio.Client, queue_name: str
) -> None:
    queues = [f"{queue_name}-{i}" for i in range(GROUPS)]
    groups = set()
    for queue in queues:
        groups.add((await group_client.create_queue(queue)).raft_group)
    assert len(groups) == GROUPS and 1 not in groups, "one queue in each data group"

    for queue in queues:
        await group_client.send(queue, queue.encode())
        await group_client.send(queue, queue.encode())
    expected = {}
    for queue in queues:
        group = (await group_client.get_queue(queue)).raft_group
        expected[queue] = await _group_leader(group_client, grouped, group)
    assert {queue: group_client.leader_for(queue) for queue in queues} == expected
    assert len(set(expected.values())) > 1, "the groups are led by different nodes"

    # A consume stream is served by the leader of the queue's group only.
    for queue in queues:
        async with group_client.consume(queue, prefetch=10) as consumer:
            for _ in range(2):
                delivery = await anext(consumer)
                assert delivery.body == queue.encode()
                await delivery.ack(wait=True)
        assert (await group_client.get_queue(queue)).stats.depth == 0
