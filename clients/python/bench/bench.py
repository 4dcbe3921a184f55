"""Throughput of the Python client in one process: batched sends, then a consumer.

Against the cluster the ``RAFTQ_*`` variables name, or, with ``--dev BINARY``, against a
3-node ``raftq dev`` cluster (TLS on) that it starts in a temporary directory and stops
afterwards::

    python bench/bench.py --dev ~/.cache/raftq-target/debug/raftq --runs 3

Each run sends ``--messages`` messages of ``--size`` bytes as ``send_batch`` calls of
``--batch`` messages, ``--in-flight`` calls at once, then consumes them all with one
consumer (``--prefetch``), settling each delivery with ``process()`` (an ack), and prints
messages per second for each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import raftq
import raftq.aio


@contextmanager
def dev_cluster(binary: Path, base_port: int) -> Iterator[raftq.Settings]:
    """A 3-node ``raftq dev`` cluster; the settings its ``client.env`` gives."""
    data_dir = Path(tempfile.mkdtemp(prefix="raftq-bench-"))
    log_path = data_dir / "dev.log"
    with open(log_path, "wb") as log:
        dev = subprocess.Popen(
            [
                str(binary),
                "dev",
                "--nodes",
                "3",
                "--data-dir",
                str(data_dir),
                "--base-port",
                str(base_port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while "raftq dev: ready" not in log_path.read_text(errors="replace"):
            if dev.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"raftq dev did not start:\n{log_path.read_text(errors='replace')}"
                )
            time.sleep(0.1)
        env_file = data_dir / "client.env"
        names = ("RAFTQ_ADDR", "RAFTQ_CA_CERT", "RAFTQ_TOKEN")
        script = f"source {env_file} && " + " && ".join(f'printf "%s\\0" "${n}"' for n in names)
        values = subprocess.run(["bash", "-c", script], check=True, capture_output=True).stdout
        yield raftq.Settings.from_env(dict(zip(names, values.decode().split("\0"), strict=False)))
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGTERM)
            try:
                dev.wait(timeout=20)
            except subprocess.TimeoutExpired:
                dev.kill()
                dev.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


async def send_phase(client: raftq.aio.Client, queue: str, args: argparse.Namespace) -> float:
    """Sends every message; the rate in messages per second."""
    body = os.urandom(args.size // 2).hex().encode()[: args.size]
    batches = args.messages // args.batch
    next_batch = iter(range(batches))

    async def worker() -> None:
        for _ in next_batch:
            await client.send_batch(queue, [body] * args.batch)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.in_flight)))
    return float(batches * args.batch) / (time.perf_counter() - started)


async def consume_phase(
    client: raftq.aio.Client, queue: str, count: int, args: argparse.Namespace
) -> float:
    """Consumes ``count`` messages, acking each; the rate in messages per second (until
    the last ack is answered)."""
    processed = 0
    started = time.perf_counter()
    async with client.consume(
        queue, prefetch=args.prefetch, max_messages=args.max_messages
    ) as consumer:
        async for delivery in consumer:
            async with delivery.process():
                processed += 1
            if processed == count:
                break
    elapsed = time.perf_counter() - started
    depth = (await client.get_queue(queue)).stats.depth
    if depth != 0:
        raise RuntimeError(f"{depth} messages left in {queue} after consuming")
    return count / elapsed


async def bench(settings: raftq.Settings, args: argparse.Namespace) -> None:
    sends: list[float] = []
    consumes: list[float] = []
    async with raftq.aio.Client(settings) as client:
        for run in range(1, args.runs + 1):
            queue = f"bench-{uuid.uuid4().hex[:8]}"
            await client.create_queue(queue)
            send_rate = await send_phase(client, queue, args)
            count = args.messages // args.batch * args.batch
            consume_rate = await consume_phase(client, queue, count, args)
            await client.delete_queue(queue)
            sends.append(send_rate)
            consumes.append(consume_rate)
            print(
                f"run {run}: send_batch {send_rate:,.0f} msg/s, consume {consume_rate:,.0f} msg/s",
                flush=True,
            )
    print(
        f"median of {args.runs}: send_batch {statistics.median(sends):,.0f} msg/s, "
        f"consume {statistics.median(consumes):,.0f} msg/s "
        f"({args.messages} messages of {args.size} B; batches of {args.batch}, "
        f"{args.in_flight} in flight; prefetch {args.prefetch})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dev", type=Path, help="start a 3-node raftq dev cluster with this binary"
    )
    parser.add_argument("--base-port", type=int, default=18401, help="the dev cluster's first port")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=100, help="bytes per message body")
    parser.add_argument("--batch", type=int, default=100, help="messages per send_batch")
    parser.add_argument("--in-flight", type=int, default=4, help="send_batch calls at once")
    parser.add_argument("--prefetch", type=int, default=500)
    parser.add_argument(
        "--max-messages", type=int, default=250, help="most messages per stream answer"
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.dev is not None:
        with dev_cluster(args.dev, args.base_port) as settings:
            asyncio.run(bench(settings, args))
    else:
        asyncio.run(bench(raftq.Settings.from_env(), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
