# syntax=docker/dockerfile:1
#
# The customer-profile image: the release binary on debian:bookworm-slim, running as uid 10001
# with its data under the volume /data.
#
#   docker build -t customer-profile:0.1.0 .
#   docker run --rm customer-profile:0.1.0 --help
#
# The container must be given a configuration: inside a container the default listen address
# (127.0.0.1) is unreachable from outside, and the service refuses any other address until auth
# principals are configured (see the Helm chart in helm/customer-profile, which does all this).

# The toolchain CI uses; Cargo.toml asks for 1.85 or newer (edition 2024).
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build ------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never

# Dependencies first, with stub sources: this layer (the slow part) is reused until Cargo.toml,
# Cargo.lock, build.rs or the protos change. protoc is vendored by the build dependency
# protoc-bin-vendored, so nothing is installed from apt.
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo ./.cargo
COPY proto ./proto
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# The real sources. COPY keeps the files' own modification times, which may be older than the
# stub build above; touching them makes cargo rebuild the crate instead of keeping the stubs.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && ./target/release/customer-profile --version

# ---- run --------------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates: for OTLP export over https. tar stays in the image so `kubectl cp` can fetch
# backups. /data is created (and owned by the service user) before it is declared a volume.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 customer-profile \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin customer-profile \
 && install -d -o 10001 -g 10001 -m 0750 /data

COPY --from=builder /src/target/release/customer-profile /usr/local/bin/customer-profile

LABEL org.opencontainers.image.title="customer-profile" \
      org.opencontainers.image.description="The company's single source of truth about its customers, as one gRPC service." \
      org.opencontainers.image.version="0.1.0"

# The data directory for every subcommand (serve, backup, restore, ...). It is the environment
# layer of the configuration, so it wins over a config file's data_dir; flags still win over it.
ENV CUSTOMER_PROFILE_DATA_DIR=/data
VOLUME ["/data"]

USER 10001:10001
# gRPC (with health and reflection) and Prometheus /metrics, as the Helm chart configures them.
EXPOSE 50051 9090

# `docker run IMAGE` runs `customer-profile serve`; any other subcommand can be given instead,
# e.g. `docker run IMAGE token` or `docker run IMAGE check-config --config /etc/cp.toml`.
ENTRYPOINT ["/usr/local/bin/customer-profile"]
CMD ["serve"]
