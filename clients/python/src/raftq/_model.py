"""The values the client takes and returns: messages, queues, results, cluster status.

Times given to the client (delays, leases, waits) are in seconds (``float``); times the
cluster reports are kept as it reports them, in milliseconds since the Unix epoch
(``*_ms`` fields).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

import grpc

from raftq._errors import error_for


@dataclasses.dataclass(frozen=True, slots=True)
class MessageProperties:
    """Carried unchanged from sender to receiver (each at most 1 KiB)."""

    label: str = ""
    #: Ties a reply or an acknowledgement message to the message it answers.
    correlation_id: str = ""
    #: Queue the receiver should answer to (a valid queue name, or empty).
    reply_to: str = ""
    content_type: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """A message to send, with every option a send has.

    Attributes:
        body: The payload (``str`` is sent as UTF-8).
        headers: Header names (not empty) and values; at most 64, 16 KiB in all.
        key: Idempotency key (at most 256 bytes): a send with a key the queue saw within
            its dedup window stores nothing and answers the first message's id. ``None``:
            the client generates one per logical send and reuses it on every retry.
        group: Message group (at most 256 bytes): a group's messages are handed out in
            send order, one at a time.
        priority: 0 (lowest, default) to 7, for messages without a group.
        delay: Not delivered before this many seconds after the send (at most 7 days).
        ttl: Time to be received, in seconds: the message expires unless received and
            acknowledged within it (0: the queue's ``default_ttl_ms``; at most 30 days).
        properties: Label, correlation id, reply-to queue, content type.
        ack_queue: Queue (which must exist) for acknowledgement messages about this one.
        ack_positive: Post a ``consumed`` acknowledgement when the message is acked.
        ack_negative: Post one when it leaves unconsumed (expired, dead-lettered, ...).
        time_to_reach: Seconds the message has to reach its queue, counted from
            ``sent_at_ms`` (0: no limit); arriving later it expires at once.
        sent_at_ms: When the message was first handed to a sender (ms since the epoch);
            0 with a ``time_to_reach`` means now.
    """

    body: bytes | str = b""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    key: str | None = None
    group: str = ""
    priority: int = 0
    delay: float = 0.0
    ttl: float = 0.0
    properties: MessageProperties | None = None
    ack_queue: str = ""
    ack_positive: bool = False
    ack_negative: bool = False
    time_to_reach: float = 0.0
    sent_at_ms: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class SendResult:
    """The answer to one send."""

    message_id: int
    #: Position in the queue's send order, 1-based.
    sequence: int
    #: True when this send repeated an earlier one with the same idempotency key: nothing
    #: new was stored, and ``message_id`` is the first send's.
    duplicate: bool
    #: True when the message arrived after its time to reach the queue and expired at once.
    expired: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message handed out under a lease."""

    message_id: int
    sequence: int
    body: bytes
    headers: Mapping[str, str]
    #: Proof of this delivery, ``"<message_id>:<attempt>"``; ack, nack, extend and reject
    #: take it. It goes stale when the lease ends or the message is delivered again.
    receipt: str
    #: Delivery attempt, 1 for the first delivery.
    attempt: int
    enqueued_at_ms: int
    lease_expires_at_ms: int
    group: str
    priority: int
    #: When the message expires unless acknowledged (0: never).
    expires_at_ms: int
    properties: MessageProperties


@dataclasses.dataclass(frozen=True, slots=True)
class PeekedMessage:
    """A stored message seen without leasing it."""

    message_id: int
    sequence: int
    body: bytes
    headers: Mapping[str, str]
    enqueued_at_ms: int
    deliveries: int
    #: ``"ready"``, ``"delayed"`` or ``"leased"``.
    state: str
    group: str
    priority: int
    expires_at_ms: int
    properties: MessageProperties


@dataclasses.dataclass(frozen=True, slots=True)
class AckResult:
    """The outcome of acknowledging (or handing back) one receipt."""

    receipt: str
    #: ``grpc.StatusCode.OK`` when the receipt was acknowledged (or handed back).
    code: grpc.StatusCode
    #: Why not, when ``code`` is not OK (e.g. a stale receipt).
    error: str = ""
    #: True when this receipt had already acknowledged the message (a retried ack).
    already_acked: bool = False

    @property
    def ok(self) -> bool:
        """Whether the receipt was acknowledged (or handed back)."""
        return self.code == grpc.StatusCode.OK

    def raise_for_error(self) -> None:
        """Raises the exception for ``code`` unless it is OK."""
        if not self.ok:
            raise error_for(self.code, f"{self.receipt}: {self.error}")


class OverflowPolicy(enum.IntEnum):
    """What a send that would pass a queue's ``max_depth`` or ``max_bytes`` does."""

    #: Refuse the send with RESOURCE_EXHAUSTED.
    REJECT = 0
    #: Make room by moving the oldest messages not under a lease to the dead-letter queue
    #: (or discarding them when the queue has none).
    DEAD_LETTER_OLDEST = 1


@dataclasses.dataclass(frozen=True, slots=True)
class QueueOptions:
    """Options fixed when a queue is created; 0 (or empty) takes the documented default.

    Attributes:
        dedup_window_ms: How long an idempotency key is remembered (default 300000).
        default_lease_ms: Lease when a receive names none (default 30000).
        max_delivery_count: Deliveries after which a message is dead-lettered or
            discarded instead of redelivered (0: unlimited).
        max_message_bytes: Largest message, body plus headers (default 1 MiB, at most
            4 MiB).
        max_depth: Most messages held (default 1,000,000).
        dead_letter_queue: Queue taking messages after ``max_delivery_count`` deliveries,
            rejected ones, and (with ``dead_letter_expired``) expired ones.
        dead_letter_expired: Also dead-letter messages whose time to be received ran out.
        default_ttl_ms: Time to be received for messages naming none (0: never expire).
        max_bytes: Most bytes held (0: no byte limit).
        overflow: What a send past ``max_depth`` or ``max_bytes`` does.
        journal: Keep a copy of every consumed message in ``<name>.journal``.
        journal_retention_ms: How long copies are kept (default 24 h).
        journal_max_messages: Most copies kept (default 100,000).
    """

    dedup_window_ms: int = 0
    default_lease_ms: int = 0
    max_delivery_count: int = 0
    max_message_bytes: int = 0
    max_depth: int = 0
    dead_letter_queue: str = ""
    dead_letter_expired: bool = False
    default_ttl_ms: int = 0
    max_bytes: int = 0
    overflow: OverflowPolicy = OverflowPolicy.REJECT
    journal: bool = False
    journal_retention_ms: int = 0
    journal_max_messages: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStats:
    """Live counters of a queue."""

    #: Messages stored: ready, delayed and in flight.
    depth: int
    #: Messages under a lease now.
    in_flight: int
    #: Messages hidden by a delay.
    delayed: int
    total_sent: int
    total_acked: int
    total_deliveries: int
    total_discarded: int
    total_expired: int
    total_dead_lettered: int
    groups: int
    bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class Queue:
    """A queue as the cluster describes it."""

    name: str
    options: QueueOptions
    created_at_ms: int
    stats: QueueStats
    #: The Raft group holding the queue (1 unless the cluster runs data groups).
    raft_group: int


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One node's replica of one data group, as that node sees it."""

    group_id: int
    #: As :attr:`NodeStatus.role`.
    role: str
    term: int
    #: 0 when the replica knows no leader.
    leader_id: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    last_log_index: int
    applied_index: int
    rebuilding: bool


@dataclasses.dataclass(frozen=True, slots=True)
class NodeResources:
    """What a node stores against its budget (``[admission]``), and its free disk."""

    stored_messages: int
    max_stored_messages: int
    stored_bytes: int
    max_stored_bytes: int
    dedup_records: int
    max_dedup_records: int
    #: 0: not known yet.
    disk_free_bytes: int
    min_free_disk_bytes: int
    #: The limit for which the node refuses sends now; empty when it takes them.
    sends_refused: str


@dataclasses.dataclass(frozen=True, slots=True)
class NodeStatus:
    """One member of the cluster, as that node reports itself."""

    node_id: int
    #: The node's public address (the client API).
    address: str
    #: ``"leader"``, ``"follower"``, ``"candidate"``, ``"learner"`` or ``"unknown"``.
    role: str
    term: int
    last_log_index: int
    committed_index: int
    applied_index: int
    #: 0 when the node knows no leader.
    leader_id: int
    voter: bool
    #: True while the node, started on an empty data directory, catches up.
    rebuilding: bool
    cluster_id: str
    internal_address: str
    #: Index of the last log entry purged behind a snapshot.
    purged_index: int
    #: Index the newest snapshot covers.
    snapshot_index: int
    resources: NodeResources
    #: The node's replicas of data groups (the fields above are group 1's).
    replicas: tuple[ReplicaStatus, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The cluster's members and leader."""

    #: 0 when no leader is known.
    leader_id: int
    leader_address: str
    nodes: tuple[NodeStatus, ...]
    cluster_id: str

    @property
    def leader(self) -> NodeStatus | None:
        """The leading node, when one leads."""
        for node in self.nodes:
            if node.node_id == self.leader_id and self.leader_id != 0:
                return node
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class QueueGrant:
    """What a principal may do on the queues a pattern matches."""

    #: An exact queue name, or a prefix ending in ``*`` (``*`` alone: every queue, and the
    #: cluster's own actions).
    queue: str
    #: Any of ``"send"``, ``"receive"``, ``"browse"``, ``"manage"``, ``"admin"``.
    actions: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who a client is (by its token or client certificate), and what it may do."""

    name: str
    grants: tuple[QueueGrant, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class CommitResult:
    """The answer to a transaction's commit."""

    #: One per send, in the order the transaction sent them.
    sent: tuple[SendResult, ...]
    #: True when this transaction id had committed already (a retried commit).
    already_committed: bool


class DeliveredMessageView:
    """What a delivery tells about its message, read from ``self.message``: shared by the
    asyncio and the blocking :class:`Delivery`."""

    __slots__ = ()

    message: ReceivedMessage

    @property
    def body(self) -> bytes:
        return self.message.body

    @property
    def headers(self) -> Mapping[str, str]:
        return self.message.headers

    @property
    def receipt(self) -> str:
        return self.message.receipt

    @property
    def attempt(self) -> int:
        """Delivery attempt: 1 for the first delivery, more for redeliveries."""
        return self.message.attempt

    @property
    def message_id(self) -> int:
        return self.message.message_id

    @property
    def sequence(self) -> int:
        return self.message.sequence

    @property
    def group(self) -> str:
        return self.message.group

    @property
    def properties(self) -> MessageProperties:
        return self.message.properties
