# The raftq server image: `docker build -t raftq .` on any machine that can pull the
# Rust and Debian base images. (Where no image can be pulled, scripts/image builds the
# same runtime image from a locally built Debian root and a binary built on the host.)
#
# Runs `raftq serve` as an unprivileged user (uid 10001) with its data on a volume;
# configure it with RAFTQ_* variables (see docs/operations.md). It refuses to start
# without TLS: give it the node's certificate and key and the cluster CA, e.g. from
# `raftq tls generate --out certs --name host,localhost,127.0.0.1` (a throwaway CA, for
# trials). With TLS, clients authenticate, and it refuses to start without the bootstrap
# admin token too (at least 16 characters, no white space; see docs/security.md), e.g.
# `head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >certs/admin-token`. node.key and
# admin-token must be readable by uid 10001:
#   docker run -e RAFTQ_NODE_ID=1 -e RAFTQ_ADVERTISE=host:7000 \
#     -e RAFTQ_INTERNAL_ADVERTISE=host:7100 -v raftq-data:/var/lib/raftq \
#     -v "$PWD/certs:/etc/raftq-tls:ro" -e RAFTQ_TLS__CERT=/etc/raftq-tls/node.pem \
#     -e RAFTQ_TLS__KEY=/etc/raftq-tls/node.key -e RAFTQ_TLS__CA=/etc/raftq-tls/ca.pem \
#     -e RAFTQ_AUTH__ADMIN_TOKEN_FILE=/etc/raftq-tls/admin-token raftq
# Clients then pass --ca-cert certs/ca.pem and a token: the admin token
# (RAFTQ_TOKEN=$(cat certs/admin-token)), or better a principal's the admin made
# (`raftq principal create NAME`, `raftq grant NAME --queue PATTERN --allow send,...`).
# Only on a network you trust: plaintext, and no authentication, with
# -e RAFTQ_INSECURE=true instead of the RAFTQ_TLS__* and RAFTQ_AUTH__* variables.
# Ports: 7000 public gRPC (clients, TLS), 7100 internal gRPC (Raft; other nodes only,
# mutual TLS), 8000 HTTP, plaintext (/healthz, /readyz, /metrics).

FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin raftq \
 && install -D target/release/raftq /out/raftq

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/raftq --no-create-home raftq \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/raftq
COPY --from=build /out/raftq /usr/local/bin/raftq
ENV RAFTQ_DATA_DIR=/var/lib/raftq \
    RAFTQ_LISTEN=0.0.0.0:7000 \
    RAFTQ_INTERNAL_LISTEN=0.0.0.0:7100 \
    RAFTQ_HTTP_LISTEN=0.0.0.0:8000 \
    RAFTQ_LOG_FORMAT=json
VOLUME ["/var/lib/raftq"]
EXPOSE 7000 7100 8000
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/raftq"]
CMD ["serve"]
