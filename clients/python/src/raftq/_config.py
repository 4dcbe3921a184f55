"""Client settings, from arguments or from the environment variables the CLI reads."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from raftq._errors import ConfigurationError

#: Where the CLI connects when ``RAFTQ_ADDR`` is not set.
DEFAULT_ADDRESS = "127.0.0.1:7401"


def split_addresses(addresses: str | Sequence[str]) -> tuple[str, ...]:
    """``HOST:PORT`` addresses from a comma-separated string or a sequence of them; a
    ``http://`` or ``https://`` prefix is dropped, blanks are skipped."""
    items = [addresses] if isinstance(addresses, str) else list(addresses)
    parsed: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip().removeprefix("http://").removeprefix("https://")
            if part:
                parsed.append(part)
    return tuple(parsed)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """How a client reaches the cluster, and how long it keeps trying.

    Times are in seconds.

    Attributes:
        addresses: Any nodes of the cluster (``HOST:PORT``); the client starts at the
            first, follows the leader the cluster names, and tries the others in turn when
            a node does not answer.
        ca_cert: The CA certificate (PEM file) the cluster's certificates chain to. With
            it the client speaks TLS; without it, plaintext (servers run ``--insecure``).
        token: The bearer token sent as ``authorization: Bearer <token>`` on every call.
        client_cert: A client certificate (PEM file) for mutual TLS; needs ``client_key``.
        client_key: The client certificate's private key (PEM file).
        retry_deadline: Total time one call may spend retrying before it gives up.
        attempt_timeout: Time limit of one attempt (a long-poll receive adds its wait).
        initial_backoff: The first pause between attempts; it doubles up to
            ``max_backoff``.
        max_backoff: The longest pause between attempts (a server's
            ``raftq-retry-after-ms`` is honoured up to this).
    """

    addresses: tuple[str, ...] = (DEFAULT_ADDRESS,)
    ca_cert: Path | None = None
    token: str | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    retry_deadline: float = 30.0
    attempt_timeout: float = 10.0
    initial_backoff: float = 0.025
    max_backoff: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", split_addresses(self.addresses))
        for name in ("ca_cert", "client_cert", "client_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if not self.addresses:
            raise ConfigurationError("no node address given")
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigurationError(
                "a client certificate needs its key, and a key its certificate"
            )
        if self.client_cert is not None and self.ca_cert is None:
            raise ConfigurationError("a client certificate needs TLS: give the CA certificate too")
        for name in ("retry_deadline", "attempt_timeout", "initial_backoff", "max_backoff"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be above 0")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from the variables the ``raftq`` CLI reads.

        ``RAFTQ_ADDR`` (comma-separated nodes; default ``127.0.0.1:7401``),
        ``RAFTQ_CA_CERT`` (TLS when set), ``RAFTQ_TOKEN`` or ``RAFTQ_TOKEN_FILE`` (not
        both; the file's surrounding white space is ignored), ``RAFTQ_CLIENT_CERT`` and
        ``RAFTQ_CLIENT_KEY`` (mutual TLS). Empty variables count as unset.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        token = get("RAFTQ_TOKEN")
        token_file = get("RAFTQ_TOKEN_FILE")
        if token is not None and token_file is not None:
            raise ConfigurationError("set RAFTQ_TOKEN or RAFTQ_TOKEN_FILE, not both")
        if token_file is not None:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as error:
                raise ConfigurationError(f"reading the token file {token_file}: {error}") from error
        ca_cert = get("RAFTQ_CA_CERT")
        client_cert = get("RAFTQ_CLIENT_CERT")
        client_key = get("RAFTQ_CLIENT_KEY")
        return cls(
            addresses=split_addresses(get("RAFTQ_ADDR") or DEFAULT_ADDRESS),
            ca_cert=Path(ca_cert) if ca_cert else None,
            token=token,
            client_cert=Path(client_cert) if client_cert else None,
            client_key=Path(client_key) if client_key else None,
        )

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes`` applied (e.g. ``settings.replace(retry_deadline=5)``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def tls(self) -> bool:
        """Whether the client speaks TLS."""
        return self.ca_cert is not None
