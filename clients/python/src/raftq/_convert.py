"""Conversions between the client's values and the generated protobuf messages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence

from raftq._errors import InvalidArgument, code_from_number
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
from raftq._proto import admin_pb2, message_pb2, queue_pb2

#: Most messages one send batch, receive, peek or redrive takes, and most receipts in one
#: ack batch or one ack message on a consume stream.
MAX_PER_CALL = 1_000


def millis(seconds: float, what: str) -> int:
    """Seconds as whole milliseconds; a negative time is refused."""
    if seconds < 0:
        raise InvalidArgument(f"{what} must not be negative, not {seconds}")
    return round(seconds * 1000)


def new_key() -> str:
    """A fresh idempotency key or transaction id."""
    return str(uuid.uuid4())


def as_message(message: Message | bytes | str) -> Message:
    """A :class:`Message`, from one or from a bare body."""
    return message if isinstance(message, Message) else Message(body=message)


def outgoing(message: Message | bytes | str) -> message_pb2.OutgoingMessage:
    """The message as the API carries it, with an idempotency key: the given one, or a new
    one that every retry of this send reuses."""
    message = as_message(message)
    body = message.body.encode() if isinstance(message.body, str) else bytes(message.body)
    sent_at_ms = message.sent_at_ms
    if message.time_to_reach and not sent_at_ms:
        sent_at_ms = int(time.time() * 1000)
    proto = message_pb2.OutgoingMessage(
        body=body,
        headers=dict(message.headers),
        idempotency_key=message.key if message.key is not None else new_key(),
        group=message.group,
        priority=message.priority,
        delay_ms=millis(message.delay, "delay"),
        ttl_ms=millis(message.ttl, "ttl"),
        ack_queue=message.ack_queue,
        ack_positive=message.ack_positive,
        ack_negative=message.ack_negative,
        time_to_reach_ms=millis(message.time_to_reach, "time_to_reach"),
        sent_at_ms=sent_at_ms,
    )
    if message.properties is not None and message.properties != MessageProperties():
        properties = message.properties
        proto.properties.CopyFrom(
            message_pb2.MessageProperties(
                label=properties.label,
                correlation_id=properties.correlation_id,
                reply_to=properties.reply_to,
                content_type=properties.content_type,
            )
        )
    return proto


def properties(proto: message_pb2.MessageProperties) -> MessageProperties:
    return MessageProperties(
        label=proto.label,
        correlation_id=proto.correlation_id,
        reply_to=proto.reply_to,
        content_type=proto.content_type,
    )


def send_result(proto: message_pb2.SendResponse) -> SendResult:
    return SendResult(
        message_id=proto.message_id,
        sequence=proto.sequence,
        duplicate=proto.duplicate,
        expired=proto.expired,
    )


def received(proto: message_pb2.ReceivedMessage) -> ReceivedMessage:
    return ReceivedMessage(
        message_id=proto.message_id,
        sequence=proto.sequence,
        body=proto.body,
        headers=dict(proto.headers),
        receipt=proto.receipt,
        attempt=proto.attempt,
        enqueued_at_ms=proto.enqueued_at_ms,
        lease_expires_at_ms=proto.lease_expires_at_ms,
        group=proto.group,
        priority=proto.priority,
        expires_at_ms=proto.expires_at_ms,
        properties=properties(proto.properties),
    )


def peeked(proto: message_pb2.PeekedMessage) -> PeekedMessage:
    return PeekedMessage(
        message_id=proto.message_id,
        sequence=proto.sequence,
        body=proto.body,
        headers=dict(proto.headers),
        enqueued_at_ms=proto.enqueued_at_ms,
        deliveries=proto.deliveries,
        state=proto.state,
        group=proto.group,
        priority=proto.priority,
        expires_at_ms=proto.expires_at_ms,
        properties=properties(proto.properties),
    )


def ack_result(receipt: str, proto: message_pb2.AckResult) -> AckResult:
    return AckResult(
        receipt=receipt,
        code=code_from_number(proto.code),
        error=proto.error,
        already_acked=proto.already_acked,
    )


def ack_results(
    receipts: Sequence[str], protos: Iterable[message_pb2.AckResult]
) -> list[AckResult]:
    return [ack_result(receipt, proto) for receipt, proto in zip(receipts, protos, strict=False)]


def commit_result(proto: message_pb2.CommitResponse) -> CommitResult:
    return CommitResult(
        sent=tuple(send_result(sent) for sent in proto.sent),
        already_committed=proto.already_committed,
    )


def queue_options_proto(options: QueueOptions) -> queue_pb2.QueueOptions:
    return queue_pb2.QueueOptions(
        dedup_window_ms=options.dedup_window_ms,
        default_lease_ms=options.default_lease_ms,
        max_delivery_count=options.max_delivery_count,
        max_message_bytes=options.max_message_bytes,
        max_depth=options.max_depth,
        dead_letter_queue=options.dead_letter_queue,
        dead_letter_expired=options.dead_letter_expired,
        default_ttl_ms=options.default_ttl_ms,
        max_bytes=options.max_bytes,
        overflow=queue_pb2.OverflowPolicy.ValueType(int(options.overflow)),
        journal=options.journal,
        journal_retention_ms=options.journal_retention_ms,
        journal_max_messages=options.journal_max_messages,
    )


def queue_options(proto: queue_pb2.QueueOptions) -> QueueOptions:
    return QueueOptions(
        dedup_window_ms=proto.dedup_window_ms,
        default_lease_ms=proto.default_lease_ms,
        max_delivery_count=proto.max_delivery_count,
        max_message_bytes=proto.max_message_bytes,
        max_depth=proto.max_depth,
        dead_letter_queue=proto.dead_letter_queue,
        dead_letter_expired=proto.dead_letter_expired,
        default_ttl_ms=proto.default_ttl_ms,
        max_bytes=proto.max_bytes,
        overflow=OverflowPolicy(int(proto.overflow)),
        journal=proto.journal,
        journal_retention_ms=proto.journal_retention_ms,
        journal_max_messages=proto.journal_max_messages,
    )


def queue(proto: queue_pb2.Queue) -> Queue:
    stats = proto.stats
    return Queue(
        name=proto.name,
        options=queue_options(proto.options),
        created_at_ms=proto.created_at_ms,
        stats=QueueStats(
            depth=stats.depth,
            in_flight=stats.in_flight,
            delayed=stats.delayed,
            total_sent=stats.total_sent,
            total_acked=stats.total_acked,
            total_deliveries=stats.total_deliveries,
            total_discarded=stats.total_discarded,
            total_expired=stats.total_expired,
            total_dead_lettered=stats.total_dead_lettered,
            groups=stats.groups,
            bytes=stats.bytes,
        ),
        raft_group=proto.raft_group,
    )


def cluster_status(proto: admin_pb2.ClusterStatusResponse) -> ClusterStatus:
    return ClusterStatus(
        leader_id=proto.leader_id,
        leader_address=proto.leader_address,
        cluster_id=proto.cluster_id,
        nodes=tuple(
            NodeStatus(
                node_id=node.node_id,
                address=node.address,
                role=node.role,
                term=node.term,
                last_log_index=node.last_log_index,
                committed_index=node.committed_index,
                applied_index=node.applied_index,
                leader_id=node.leader_id,
                voter=node.voter,
                rebuilding=node.rebuilding,
                cluster_id=node.cluster_id,
                internal_address=node.internal_address,
                purged_index=node.purged_index,
                snapshot_index=node.snapshot_index,
                resources=NodeResources(
                    stored_messages=node.resources.stored_messages,
                    max_stored_messages=node.resources.max_stored_messages,
                    stored_bytes=node.resources.stored_bytes,
                    max_stored_bytes=node.resources.max_stored_bytes,
                    dedup_records=node.resources.dedup_records,
                    max_dedup_records=node.resources.max_dedup_records,
                    disk_free_bytes=node.resources.disk_free_bytes,
                    min_free_disk_bytes=node.resources.min_free_disk_bytes,
                    sends_refused=node.resources.sends_refused,
                ),
                replicas=tuple(
                    ReplicaStatus(
                        group_id=replica.group_id,
                        role=replica.role,
                        term=replica.term,
                        leader_id=replica.leader_id,
                        voters=tuple(replica.voters),
                        learners=tuple(replica.learners),
                        last_log_index=replica.last_log_index,
                        applied_index=replica.applied_index,
                        rebuilding=replica.rebuilding,
                    )
                    for replica in node.replicas
                ),
            )
            for node in proto.nodes
        ),
    )


def principal(proto: admin_pb2.PrincipalInfo) -> Principal:
    return Principal(
        name=proto.name,
        grants=tuple(
            QueueGrant(queue=grant.queue, actions=tuple(grant.actions)) for grant in proto.grants
        ),
    )
