"""Transactions on top of the atomic ``Commit`` call: receive, ack and send across queues,
then commit (all or nothing) or abort."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import TYPE_CHECKING

from raftq import _convert as convert
from raftq._errors import FailedPrecondition, NotFound, RaftqError
from raftq._model import CommitResult, Message, ReceivedMessage
from raftq._proto import message_pb2

if TYPE_CHECKING:
    from raftq.aio._client import Client

_log = logging.getLogger("raftq")


class Transaction:
    """A transaction in progress, made by :meth:`raftq.aio.Client.transaction`.

    Messages received through it stay leased until the commit acknowledges them; sends
    are held here and stored only by the commit. The commit applies every ack and send
    in one log entry, or none of them (a stale receipt, an unknown queue, an invalid
    message or a full queue refuses the whole commit). It is retried under the
    transaction's id, which the cluster remembers for 5 minutes, so it is applied at most
    once however often it is retried.

    The lease of what it received is the transaction's timeout: a lease that ends before
    the commit makes the commit fail with :class:`~raftq.FailedPrecondition`, nothing of
    it applied, and the messages are delivered again.

    As an async context manager it commits when the block completes and aborts when the
    block raises (the exception propagates). When the commit itself fails, the received
    messages are handed back and the error is raised.

    With data groups every queue of one transaction must live in one Raft group (create
    them with ``colocate_with``); otherwise the commit fails with FailedPrecondition.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        #: The transaction's id: a retried commit with it is applied once.
        self.id = convert.new_key()
        self._acks: list[message_pb2.TransactionAck] = []
        self._sends: list[message_pb2.TransactionSend] = []
        self._received: list[tuple[str, str]] = []
        self._finished = False
        #: The commit's answer, once committed.
        self.result: CommitResult | None = None

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._finished:
            return
        if exc is None:
            await self.commit()
            return
        try:
            await self.abort()
        except RaftqError as error:
            # The block's own exception is the one to see; the messages come back when
            # their leases end.
            _log.warning("aborting transaction %s: %s", self.id, error)

    def _check_open(self) -> None:
        if self._finished:
            raise RaftqError(f"transaction {self.id} is finished already")

    async def receive(
        self,
        queue: str,
        max_messages: int = 1,
        *,
        wait: float = 0.0,
        lease: float | None = None,
    ) -> list[ReceivedMessage]:
        """Receives under a lease (see :meth:`raftq.aio.Client.receive`); the messages are
        acknowledged by the commit, and handed back by an abort. The lease is the time
        the transaction has to commit them."""
        self._check_open()
        messages = await self._client.receive(queue, max_messages, wait=wait, lease=lease)
        for message in messages:
            self.ack(queue, message.receipt)
        return messages

    def ack(self, queue: str, receipt: str) -> None:
        """Adds the acknowledgement of a delivery received some other way."""
        self._check_open()
        self._acks.append(message_pb2.TransactionAck(queue=queue, receipt=receipt))
        self._received.append((queue, receipt))

    def send(self, queue: str, message: Message | bytes | str) -> None:
        """Adds a send; it is stored only if the transaction commits. Its idempotency key
        is fixed now."""
        self._check_open()
        self._sends.append(
            message_pb2.TransactionSend(queue=queue, message=convert.outgoing(message))
        )

    @property
    def empty(self) -> bool:
        """Whether the transaction holds no ack and no send."""
        return not self._acks and not self._sends

    async def commit(self) -> CommitResult:
        """Applies every ack and send, or none. An empty transaction commits nothing.

        On failure the received messages are handed back and the error raised:
        :class:`~raftq.FailedPrecondition` when a lease had ended (nothing applied), or an
        error with ``outcome_unknown`` when retries ran out (it may have been applied; a
        commit with the same :attr:`id` within 5 minutes would tell).
        """
        self._check_open()
        self._finished = True
        if self.empty:
            self.result = CommitResult(sent=(), already_committed=False)
            return self.result
        request = message_pb2.CommitRequest(
            transaction_id=self.id, acks=self._acks, sends=self._sends
        )
        try:
            self.result = await self._client.commit_request(request)
        except RaftqError:
            await self._release(quiet=True)
            raise
        return self.result

    async def abort(self) -> None:
        """Hands every message received through the transaction back at once; nothing it
        sent is stored."""
        self._check_open()
        self._finished = True
        await self._release(quiet=False)

    async def _release(self, *, quiet: bool) -> None:
        """Nacks what the transaction received. A receipt already stale (its lease ended,
        or the commit did apply) needs nothing."""

        async def nack(queue: str, receipt: str) -> None:
            with contextlib.suppress(FailedPrecondition, NotFound):
                await self._client.nack(queue, receipt)

        results = await asyncio.gather(
            *(nack(queue, receipt) for queue, receipt in self._received), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                if quiet:
                    _log.warning("handing back a message of transaction %s: %s", self.id, result)
                else:
                    raise result
