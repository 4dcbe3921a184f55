"""Python client of raftq, a clustered replicated message queue.

Two clients with the same calls: :class:`raftq.aio.Client` for asyncio, and
:class:`raftq.Client`, which blocks (it runs the asyncio client on a thread of its own).
Both read their settings from the variables the ``raftq`` CLI reads (``RAFTQ_ADDR``,
``RAFTQ_CA_CERT``, ``RAFTQ_TOKEN`` or ``RAFTQ_TOKEN_FILE``, ``RAFTQ_CLIENT_CERT`` and
``RAFTQ_CLIENT_KEY``) unless given :class:`Settings`.

::

    import raftq

    with raftq.Client() as client:
        client.create_queue("orders")
        client.send("orders", raftq.Message(body=b"order #1", key="order-1"))
        for delivery in client.consume("orders", prefetch=100):
            with delivery.process():
                print(delivery.body)
"""

from raftq._config import DEFAULT_ADDRESS, Settings
from raftq._errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    ConfigurationError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    RaftqError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from raftq._model import (
    AckResult,
    ClusterStatus,
    CommitResult,
    Message,
    MessageProperties,
    NodeResources,
    NodeStatus,
    OverflowPolicy,
    PeekedMessage,
    Principal,
    Queue,
    QueueGrant,
    QueueOptions,
    QueueStats,
    ReceivedMessage,
    ReplicaStatus,
    SendResult,
)
from raftq._sync import Client, Consumer, Delivery, Processing, Transaction

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ADDRESS",
    "Aborted",
    "AckResult",
    "AlreadyExists",
    "Cancelled",
    "Client",
    "ClusterStatus",
    "CommitResult",
    "ConfigurationError",
    "Consumer",
    "DataLoss",
    "DeadlineExceeded",
    "Delivery",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Message",
    "MessageProperties",
    "NodeResources",
    "NodeStatus",
    "NotFound",
    "OutOfRange",
    "OverflowPolicy",
    "PeekedMessage",
    "PermissionDenied",
    "Principal",
    "Processing",
    "Queue",
    "QueueGrant",
    "QueueOptions",
    "QueueStats",
    "RaftqError",
    "ReceivedMessage",
    "ReplicaStatus",
    "ResourceExhausted",
    "SendResult",
    "Settings",
    "Transaction",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
]
