# The raftq server image: `docker build -t raftq .` on any machine that can pull the
# Rust and Debian base images. (Where no image can be pulled, scripts/image builds the
# same runtime image from a locally built Debian root and a binary built on the host.)
#
# Runs `raftq serve` as an unprivileged user with its data on a volume; configure it with
# RAFTQ_* variables (see docs/operations.md), e.g.
#   docker run -e RAFTQ_NODE_ID=1 -e RAFTQ_ADVERTISE=host:7000 -v raftq-data:/var/lib/raftq raftq

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
    RAFTQ_HTTP_LISTEN=0.0.0.0:8000 \
    RAFTQ_LOG_FORMAT=json
VOLUME ["/var/lib/raftq"]
EXPOSE 7000 8000
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/raftq"]
CMD ["serve"]
