"""The asyncio client: every call of the public API, with leader following and retries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType

from raftq import _convert as convert
from raftq._channel import Router
from raftq._config import Settings
from raftq._errors import InvalidArgument
from raftq._model import (
    AckResult,
    ClusterStatus,
    CommitResult,
    Message,
    PeekedMessage,
    Principal,
    Queue,
    QueueOptions,
    ReceivedMessage,
    SendResult,
)
from raftq._proto import admin_pb2, message_pb2, queue_pb2
from raftq.aio._consumer import Consumer
from raftq.aio._transaction import Transaction

#: Most queues one ListQueues call returns.
_LIST_PAGE = 1_000


class Client:
    """An asyncio client of a raftq cluster.

    Give it any node's address (or several): it finds the leader, follows leader changes,
    remembers each queue's leader, and sends a call again on a retryable answer
    (UNAVAILABLE and the like) until ``settings.retry_deadline``. Each send carries an
    idempotency key, fixed before its first attempt, so a retried send is stored once.

    Use it as an async context manager, or call :meth:`close` when done::

        async with raftq.aio.Client() as client:      # settings from RAFTQ_* variables
            await client.send("orders", b"order #1")

    Connections are opened lazily, on the event loop of the first call; a client belongs
    to that loop.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        """A client with ``settings``, or with :meth:`Settings.from_env` when none."""
        self.settings = settings if settings is not None else Settings.from_env()
        self._router = Router(self.settings)
        self._consumers: set[Consumer] = set()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the consumers still open (handing back what they hold) and every
        connection."""
        for consumer in list(self._consumers):
            await consumer.close()
        await self._router.close()

    def leader_for(self, queue: str | None = None) -> str:
        """The node the next call on ``queue`` (any call, for ``None``) goes to first: the
        leader the client knows of, or a seed address."""
        return self._router.address_for(queue)

    # -- sending -------------------------------------------------------------------------

    async def send(self, queue: str, message: Message | bytes | str) -> SendResult:
        """Sends one message (a :class:`Message` for options, or a bare body).

        The idempotency key (the message's, or one generated now) is reused by every
        retry: a send retried after an unknown outcome is stored once, and answered with
        ``duplicate=True`` and the first message's id.
        """
        request = message_pb2.SendRequest(queue=queue, message=convert.outgoing(message))
        response = await self._router.unary(queue, lambda node: node.messages.Send, request)
        return convert.send_result(response)

    async def send_batch(
        self, queue: str, messages: Iterable[Message | bytes | str]
    ) -> list[SendResult]:
        """Sends 1 to 1,000 messages, stored all or none, in order. Each message keeps its
        idempotency key across retries, so a retried batch is stored once."""
        request = message_pb2.SendBatchRequest(
            queue=queue, messages=[convert.outgoing(message) for message in messages]
        )
        response = await self._router.unary(queue, lambda node: node.messages.SendBatch, request)
        return [convert.send_result(result) for result in response.results]

    # -- receiving -----------------------------------------------------------------------

    async def receive(
        self,
        queue: str,
        max_messages: int = 1,
        *,
        wait: float = 0.0,
        lease: float | None = None,
        message_id: int = 0,
        correlation_id: str = "",
    ) -> list[ReceivedMessage]:
        """Receives up to ``max_messages`` (1..1,000) ready messages under a lease.

        Args:
            wait: Long poll: wait up to this many seconds (at most 20) for a message when
                none is ready.
            lease: Lease in seconds (0.1 .. 12 h); ``None`` uses the queue's default.
            message_id: Selective receive: only this message (when not 0) ...
            correlation_id: ... and/or only messages with this correlation id.
        """
        _, messages = await self._receive(
            queue, max_messages, wait, lease, message_id, correlation_id, ()
        )
        return messages

    async def ack_and_receive(
        self,
        queue: str,
        receipts: Sequence[str],
        max_messages: int = 1,
        *,
        wait: float = 0.0,
        lease: float | None = None,
    ) -> tuple[list[AckResult], list[ReceivedMessage]]:
        """Acknowledges ``receipts`` and receives the next messages in one call and one
        log entry. Each receipt succeeds or fails on its own (see :meth:`ack_batch`)."""
        return await self._receive(queue, max_messages, wait, lease, 0, "", receipts)

    async def _receive(
        self,
        queue: str,
        max_messages: int,
        wait: float,
        lease: float | None,
        message_id: int,
        correlation_id: str,
        receipts: Sequence[str],
    ) -> tuple[list[AckResult], list[ReceivedMessage]]:
        request = message_pb2.ReceiveRequest(
            queue=queue,
            max_messages=max_messages,
            wait_ms=convert.millis(wait, "wait"),
            lease_ms=convert.millis(lease, "lease") if lease is not None else 0,
            message_id=message_id,
            correlation_id=correlation_id,
            ack_receipts=list(receipts),
        )
        response = await self._router.unary(
            queue, lambda node: node.messages.Receive, request, extra_timeout=wait
        )
        return (
            convert.ack_results(receipts, response.ack_results),
            [convert.received(message) for message in response.messages],
        )

    def consume(
        self,
        queue: str,
        *,
        prefetch: int = 0,
        max_messages: int = 0,
        lease: float | None = None,
    ) -> Consumer:
        """A consumer on ``queue`` over a consume stream; iterate it for deliveries::

            async with client.consume("orders", prefetch=100) as consumer:
                async for delivery in consumer:
                    async with delivery.process():
                        handle(delivery.body)

        Args:
            prefetch: Most deliveries held unacknowledged (1..1,000; 0: the server's
                default, 200).
            max_messages: Most messages in one answer of the stream (0: 100).
            lease: Lease of each delivery in seconds; ``None`` uses the queue's default.
                It runs from the moment the leader hands the message out, including the
                time it waits in the prefetch.

        The stream opens on the first iteration. Close the consumer (``async with``, or
        :meth:`Consumer.close`) to hand back at once what it holds unprocessed; the
        client's :meth:`close` closes those still open.
        """
        consumer = Consumer(
            self._router,
            queue,
            prefetch=prefetch,
            max_messages=max_messages,
            lease=lease,
            on_close=self._consumers.discard,
        )
        self._consumers.add(consumer)
        return consumer

    # -- settling deliveries -------------------------------------------------------------

    async def ack(self, queue: str, receipt: str) -> bool:
        """Acknowledges a delivery: the message is gone for good. Returns True when this
        receipt had acknowledged it already (a retried ack). A stale receipt raises
        :class:`~raftq.FailedPrecondition`."""
        request = message_pb2.AckRequest(queue=queue, receipt=receipt)
        response = await self._router.unary(queue, lambda node: node.messages.Ack, request)
        return response.already_acked

    async def ack_batch(self, queue: str, receipts: Sequence[str]) -> list[AckResult]:
        """Acknowledges up to 1,000 deliveries of ``queue`` in one call; each receipt
        succeeds or fails on its own (see :attr:`AckResult.ok`)."""
        request = message_pb2.AckBatchRequest(queue=queue, receipts=list(receipts))
        response = await self._router.unary(queue, lambda node: node.messages.AckBatch, request)
        return convert.ack_results(receipts, response.results)

    async def nack(self, queue: str, receipt: str, *, delay: float = 0.0) -> int:
        """Hands a delivery back: visible again at once, or after ``delay`` seconds (at
        most 12 h). Returns when it becomes visible (ms since the epoch)."""
        request = message_pb2.NackRequest(
            queue=queue, receipt=receipt, delay_ms=convert.millis(delay, "delay")
        )
        response = await self._router.unary(queue, lambda node: node.messages.Nack, request)
        return response.visible_at_ms

    async def extend_lease(self, queue: str, receipt: str, lease: float) -> int:
        """Sets a delivery's lease to ``lease`` seconds from now (0.1 .. 12 h). Returns when
        the new lease ends (ms since the epoch)."""
        request = message_pb2.ExtendLeaseRequest(
            queue=queue, receipt=receipt, lease_ms=convert.millis(lease, "lease")
        )
        response = await self._router.unary(queue, lambda node: node.messages.ExtendLease, request)
        return response.lease_expires_at_ms

    async def reject(self, queue: str, receipt: str, detail: str = "") -> bool:
        """Takes a leased message out of its queue for good, as one that can never be
        processed: to the dead-letter queue (reason ``rejected``, ``detail`` as
        ``raftq-dead-letter-detail``), or discarded without one. Returns whether it was
        dead-lettered."""
        request = message_pb2.RejectRequest(queue=queue, receipt=receipt, detail=detail)
        response = await self._router.unary(queue, lambda node: node.messages.Reject, request)
        return response.dead_lettered

    # -- browsing and dead letters -------------------------------------------------------

    async def peek(
        self,
        queue: str,
        *,
        after_sequence: int = 0,
        max_messages: int = 0,
        message_id: int = 0,
        correlation_id: str = "",
    ) -> list[PeekedMessage]:
        """Looks at stored messages in send order without leasing them.

        Starts after ``after_sequence`` (0: the head); at most ``max_messages`` (0: 10; at
        most 1,000): page on with the last sequence returned. ``message_id`` and
        ``correlation_id`` select as in :meth:`receive`.
        """
        request = message_pb2.PeekRequest(
            queue=queue,
            after_sequence=after_sequence,
            max_messages=max_messages,
            message_id=message_id,
            correlation_id=correlation_id,
        )
        response = await self._router.unary(queue, lambda node: node.messages.Peek, request)
        return [convert.peeked(message) for message in response.messages]

    async def redrive(
        self,
        queue: str,
        *,
        message_ids: Sequence[int] = (),
        max_messages: int = 0,
        to: str = "",
    ) -> int:
        """Moves messages out of the dead-letter queue ``queue``, all or none: the
        messages ``message_ids``, or with none up to ``max_messages`` (1..1,000) from the
        head; back to the queue each came from, or to ``to``. Returns how many moved.

        Moving by id is safe to retry (a retry after success raises NotFound); moving by
        count after an unknown outcome may move a second batch.
        """
        request = message_pb2.RedriveRequest(
            queue=queue, message_ids=list(message_ids), max_messages=max_messages, to=to
        )
        response = await self._router.unary(queue, lambda node: node.messages.Redrive, request)
        return response.moved

    # -- transactions --------------------------------------------------------------------

    def transaction(self) -> Transaction:
        """A transaction: receive, ack and send across queues, all applied or none::

            async with client.transaction() as tx:
                for message in await tx.receive("orders", 10, wait=1.0):
                    tx.send("invoices", Message(body=message.body))

        Committed when the block ends (the commit is retried under one transaction id, so
        it is applied at most once); aborted when it raises: nothing is sent and the
        received messages are handed back at once. See :class:`Transaction`.
        """
        return Transaction(self)

    async def commit(
        self,
        transaction_id: str,
        *,
        acks: Sequence[tuple[str, str]] = (),
        sends: Sequence[tuple[str, Message | bytes | str]] = (),
    ) -> CommitResult:
        """Applies ``acks`` (``(queue, receipt)`` pairs) and ``sends`` (``(queue,
        message)`` pairs) together or not at all, under ``transaction_id`` (a retry with
        the same id within 5 minutes is applied once). :meth:`transaction` is the usual
        way to build one."""
        request = message_pb2.CommitRequest(
            transaction_id=transaction_id,
            acks=[
                message_pb2.TransactionAck(queue=queue, receipt=receipt) for queue, receipt in acks
            ],
            sends=[
                message_pb2.TransactionSend(queue=queue, message=convert.outgoing(message))
                for queue, message in sends
            ],
        )
        return await self.commit_request(request)

    async def commit_request(self, request: message_pb2.CommitRequest) -> CommitResult:
        """Sends a prepared commit (its messages' keys fixed), retrying under its id."""
        if not request.acks and not request.sends:
            raise InvalidArgument("a commit needs at least one ack or send")
        # Every queue of one commit lives in one Raft group: go to the first one's leader.
        first = request.acks[0].queue if request.acks else request.sends[0].queue
        response = await self._router.unary(first, lambda node: node.messages.Commit, request)
        return convert.commit_result(response)

    # -- queues --------------------------------------------------------------------------

    async def create_queue(
        self, name: str, options: QueueOptions | None = None, *, colocate_with: str = ""
    ) -> Queue:
        """Creates a queue (1..128 of ``A-Z a-z 0-9 . _ -``, not starting with ``.`` or
        ``-``). ``colocate_with`` places it in the Raft group of that queue, so that
        transactions may span both. An existing name raises AlreadyExists."""
        request = queue_pb2.CreateQueueRequest(
            name=name,
            options=convert.queue_options_proto(options or QueueOptions()),
            colocate_with=colocate_with,
        )
        response = await self._router.unary(None, lambda node: node.queues.CreateQueue, request)
        return convert.queue(response.queue)

    async def get_queue(self, name: str) -> Queue:
        """A queue's options and live counters."""
        request = queue_pb2.GetQueueRequest(name=name)
        response = await self._router.unary(name, lambda node: node.queues.GetQueue, request)
        return convert.queue(response.queue)

    async def list_queues(self, *, after: str = "", limit: int | None = None) -> list[Queue]:
        """Queues in name order, after ``after``: all of them (paging), or at most
        ``limit`` (at most 1,000)."""
        queues: list[Queue] = []
        while limit is None or len(queues) < limit:
            page = _LIST_PAGE if limit is None else min(_LIST_PAGE, limit - len(queues))
            request = queue_pb2.ListQueuesRequest(after=after, limit=page)
            response = await self._router.unary(None, lambda node: node.queues.ListQueues, request)
            if not response.queues:
                break
            queues.extend(convert.queue(queue) for queue in response.queues)
            after = response.queues[-1].name
        return queues

    async def delete_queue(self, name: str) -> None:
        """Deletes a queue and its messages."""
        request = queue_pb2.DeleteQueueRequest(name=name)
        await self._router.unary(None, lambda node: node.queues.DeleteQueue, request)

    async def purge_queue(self, name: str) -> int:
        """Removes every message of a queue; returns how many."""
        request = queue_pb2.PurgeQueueRequest(name=name)
        response = await self._router.unary(name, lambda node: node.queues.PurgeQueue, request)
        return response.removed

    # -- cluster -------------------------------------------------------------------------

    async def cluster_status(self) -> ClusterStatus:
        """The cluster's members, their roles and the leader."""
        request = admin_pb2.ClusterStatusRequest()
        response = await self._router.unary(None, lambda node: node.admin.ClusterStatus, request)
        return convert.cluster_status(response)

    # -- principals and grants (the ``admin`` action) -------------------------------------

    async def create_principal(self, name: str) -> str:
        """Creates a principal (letters, digits, ``-``, ``_``, ``.``, ``@``; at most 128
        bytes) and returns its bearer token: shown this once, only its hash is kept."""
        request = admin_pb2.CreatePrincipalRequest(name=name)
        response = await self._router.unary(None, lambda node: node.admin.CreatePrincipal, request)
        return response.token

    async def delete_principal(self, name: str) -> None:
        """Deletes a principal: its token (or certificate) no longer authenticates."""
        request = admin_pb2.DeletePrincipalRequest(name=name)
        await self._router.unary(None, lambda node: node.admin.DeletePrincipal, request)

    async def list_principals(self) -> list[Principal]:
        """Every principal with its grants."""
        request = admin_pb2.ListPrincipalsRequest()
        response = await self._router.unary(None, lambda node: node.admin.ListPrincipals, request)
        return [convert.principal(principal) for principal in response.principals]

    async def grant(self, name: str, queue: str, actions: Sequence[str]) -> Principal:
        """Lets principal ``name`` do ``actions`` (``send``, ``receive``, ``browse``,
        ``manage``, ``admin``) on the queues ``queue`` matches (an exact name, or a prefix
        ending in ``*``), replacing its earlier grant on that pattern."""
        request = admin_pb2.GrantRequest(
            name=name, grant=admin_pb2.QueueGrant(queue=queue, actions=list(actions))
        )
        response = await self._router.unary(None, lambda node: node.admin.Grant, request)
        return convert.principal(response.principal)

    async def revoke(self, name: str, queue: str) -> bool:
        """Takes away principal ``name``'s grant on the pattern ``queue``; False when it
        had none there."""
        request = admin_pb2.RevokeRequest(name=name, queue=queue)
        response = await self._router.unary(None, lambda node: node.admin.Revoke, request)
        return response.revoked
