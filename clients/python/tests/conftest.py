"""Fixtures: one real 3-node TLS cluster for the session, and clients of it.

The server binary is ``$RAFTQ_BIN`` (default
``${CARGO_TARGET_DIR:-$HOME/.cache/raftq-target}/debug/raftq``); the cluster's ports start
at ``$RAFTQ_TEST_BASE_PORT`` (default 17401; the next free block of ports is taken when
those are in use).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

import raftq
import raftq.aio

from cluster import DevCluster, binary, free_base_port


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    base = free_base_port(int(os.environ.get("RAFTQ_TEST_BASE_PORT", "17401")), 3)
    dev = DevCluster(binary(), tmp_path_factory.mktemp("raftq-dev"), base)
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client(cluster: DevCluster) -> AsyncIterator[raftq.aio.Client]:
    """An asyncio client connected as a user of ``client.env`` would be: TLS, admin token."""
    async with raftq.aio.Client(cluster.settings()) as client:
        yield client


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    """A queue name of this test's own."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name.removeprefix("test_"))[:40]
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(loop_scope="session")
async def failover(cluster: DevCluster, client: raftq.aio.Client) -> AsyncIterator[DevCluster]:
    """The cluster, for a test that kills nodes: it starts them again afterwards and waits
    until all three follow one leader, so that later tests have the whole cluster."""
    await cluster.healthy(client)
    try:
        yield cluster
    finally:
        for node_id in cluster.killed:
            cluster.restart(node_id)
        await cluster.healthy(client)
