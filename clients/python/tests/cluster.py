"""A real local cluster for the tests: ``raftq dev`` and its ``raftq serve`` processes.

``raftq dev --nodes 3`` starts the nodes with TLS on (a throwaway CA under
``<data-dir>/tls``), writes ``<data-dir>/client.env`` (``RAFTQ_ADDR``, ``RAFTQ_CA_CERT``,
the admin ``RAFTQ_TOKEN``) and prints ``raftq dev: ready`` once a leader leads all the
voters. Node ``i`` (from 0) listens on ``base + i``, its HTTP side on ``base + 100 + i``
and its internal port on ``base + 200 + i``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import raftq
import raftq.aio

T = TypeVar("T")

#: How long the dev cluster may take to be ready.
READY_TIMEOUT = 90.0


async def wait_for(
    condition: Callable[[], Awaitable[T | None]],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.05,
) -> T:
    """Polls ``condition`` until it returns something true, or fails after ``timeout``
    seconds naming ``what`` it waited for. Errors from the condition count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = await condition()
            if value:
                return value
        except raftq.RaftqError as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; last error: {last}"
            )
        await asyncio.sleep(interval)


def binary() -> Path:
    """The server binary: ``$RAFTQ_BIN``, or the debug build of the checkout."""
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache" / "raftq-target")
    path = Path(os.environ.get("RAFTQ_BIN") or Path(target) / "debug" / "raftq")
    if not path.is_file():
        raise FileNotFoundError(f"no raftq binary at {path}: build it, or point RAFTQ_BIN at one")
    return path


def ports_free(base: int, nodes: int) -> bool:
    """Whether every port a dev cluster at ``base`` needs is free on 127.0.0.1."""
    for i in range(nodes):
        for port in (base + i, base + 100 + i, base + 200 + i):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    return False
    return True


def free_base_port(first: int, nodes: int) -> int:
    """The first base port from ``first`` (in steps of 10) whose ports are all free."""
    for base in range(first, first + 400, 10):
        if ports_free(base, nodes):
            return base
    raise RuntimeError(f"no free ports for a dev cluster from {first}")


class DevCluster:
    """A ``raftq dev`` cluster in ``data_dir``; nodes can be killed with SIGKILL and
    started again with the command line they had."""

    def __init__(
        self,
        binary: Path,
        data_dir: Path,
        base_port: int,
        nodes: int = 3,
        env: dict[str, str] | None = None,
    ) -> None:
        self.binary = binary
        self._process_env = env
        self.data_dir = data_dir.resolve()
        self.base_port = base_port
        self.nodes = nodes
        self.log = self.data_dir / "dev.log"
        self._dev: subprocess.Popen[bytes] | None = None
        # Command lines of killed nodes, and the nodes started again by the tests.
        self._argv: dict[int, list[str]] = {}
        self._restarted: dict[int, subprocess.Popen[bytes]] = {}
        self.env: dict[str, str] = {}

    # -- starting and stopping -----------------------------------------------------------

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self._dev = subprocess.Popen(
                [
                    str(self.binary),
                    "dev",
                    "--nodes",
                    str(self.nodes),
                    "--data-dir",
                    str(self.data_dir),
                    "--base-port",
                    str(self.base_port),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._process_env,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            text = self.log.read_text(errors="replace")
            if "raftq dev: ready" in text:
                break
            if "not ready" in text or self._dev.poll() is not None:
                self.stop()
                raise RuntimeError(f"raftq dev did not start:\n{text}\n{self.node_logs()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"raftq dev not ready within {READY_TIMEOUT} s:\n{text}")
            time.sleep(0.1)
        self.env = self._client_env()

    def _client_env(self) -> dict[str, str]:
        """The variables ``client.env`` sets, as a shell that sources it sees them."""
        names = ("RAFTQ_ADDR", "RAFTQ_CA_CERT", "RAFTQ_TOKEN")
        script = f"source {self.data_dir / 'client.env'} && " + " && ".join(
            f'printf "%s\\0" "${name}"' for name in names
        )
        output = subprocess.run(["bash", "-c", script], check=True, capture_output=True).stdout
        values = output.decode().split("\0")[: len(names)]
        return dict(zip(names, values, strict=True))

    def stop(self) -> None:
        """Stops the dev process (which stops its nodes), the nodes the tests started
        again, and anything of this cluster left running."""
        if self._dev is not None and self._dev.poll() is None:
            self._dev.send_signal(signal.SIGTERM)
            try:
                self._dev.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._dev.kill()
                self._dev.wait()
        for process in self._restarted.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self._restarted.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._restarted.clear()
        for node_id in range(1, self.nodes + 1):
            pid = self.node_pid(node_id)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)

    def node_logs(self) -> str:
        parts = []
        for node_id in range(1, self.nodes + 1):
            path = self.data_dir / f"node-{node_id}.log"
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-20:]
                parts.append(f"--- node {node_id} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- settings ------------------------------------------------------------------------

    def address(self, node_id: int) -> str:
        return f"127.0.0.1:{self.base_port + node_id - 1}"

    def settings(self, **changes: object) -> raftq.Settings:
        """Settings as a user of ``client.env`` has them (TLS and the admin token)."""
        return raftq.Settings.from_env(self.env).replace(**changes)

    # -- nodes ---------------------------------------------------------------------------

    def _node_data_dir(self, node_id: int) -> str:
        return str(self.data_dir / f"node-{node_id}")

    def node_pid(self, node_id: int) -> int | None:
        """The pid of node ``node_id``'s ``raftq serve`` process, if it runs."""
        wanted = self._node_data_dir(node_id)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().split(") ", 1)[1][0]
            except (OSError, IndexError):
                continue
            if state == "Z":
                continue
            args = [arg.decode(errors="replace") for arg in argv]
            if len(args) > 2 and args[1] == "serve" and "--data-dir" in args:
                index = args.index("--data-dir")
                if index + 1 < len(args) and args[index + 1] == wanted:
                    return int(entry.name)
        return None

    def kill(self, node_id: int) -> None:
        """SIGKILLs node ``node_id`` and waits until it is gone."""
        pid = self.node_pid(node_id)
        assert pid is not None, f"node {node_id} is not running"
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        self._argv[node_id] = [arg.decode() for arg in argv if arg]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.node_pid(node_id) is not None:
            assert time.monotonic() < deadline, f"node {node_id} (pid {pid}) did not die"
            time.sleep(0.01)

    def restart(self, node_id: int) -> None:
        """Starts a killed node again with the command line it had."""
        argv = self._argv.pop(node_id)
        with open(self.data_dir / f"node-{node_id}.log", "ab") as log:
            self._restarted[node_id] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self._process_env,
            )

    @property
    def killed(self) -> list[int]:
        return sorted(self._argv)

    async def leader(self, client: raftq.aio.Client) -> int:
        """The id of the node that leads, once one does."""

        async def leading() -> int | None:
            status = await client.cluster_status()
            return status.leader_id or None

        return await wait_for(leading, "a leader")

    async def healthy(self, client: raftq.aio.Client, timeout: float = 60.0) -> None:
        """Waits until every node is a voter that answers for itself and knows the
        leader, and none is rebuilding."""

        async def all_up() -> bool:
            status = await client.cluster_status()
            return (
                status.leader_id != 0
                and len(status.nodes) == self.nodes
                and all(
                    node.voter
                    and not node.rebuilding
                    and node.role in ("leader", "follower")
                    and node.leader_id == status.leader_id
                    for node in status.nodes
                )
            )

        await wait_for(all_up, "every node to be up and following one leader", timeout=timeout)
