"""The asyncio client of raftq (``grpc.aio``).

::

    import raftq.aio

    async with raftq.aio.Client() as client:          # settings from RAFTQ_* variables
        await client.send("orders", b"order #1")
        async with client.consume("orders", prefetch=100) as consumer:
            async for delivery in consumer:
                async with delivery.process():
                    await handle(delivery.body)
"""

from raftq.aio._client import Client
from raftq.aio._consumer import Consumer, Delivery, Processing
from raftq.aio._transaction import Transaction

__all__ = ["Client", "Consumer", "Delivery", "Processing", "Transaction"]
