# Multi-stage build of frappe-gateway. The runtime image holds only the binary and CA roots
# and runs as the unprivileged user 10001:10001 (a fixed id, so certificate files on the host
# can be made readable to it: `chown 10001:10001 certs/gateway.key`).
#
# Base images are pinned to exact releases; bump them deliberately (and rebuild) for security
# updates. For bit-for-bit pins, append the digest your registry shows: `image:tag@sha256:…`.
# Build and run on the same Debian release, so the binary finds the glibc it was linked with.
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=debian:12.11-slim

FROM ${RUST_IMAGE} AS build
# PGO=1: a profile-guided build (benches/pgo.sh: an instrumented build, a training load on
# loopback ports inside the build, a second build with the profile). About twice the build
# time for 3-12 % less CPU per request (benches/RESULTS.md).
ARG PGO=0
WORKDIR /src
# Cargo.toml names the benches and examples as targets: the manifest needs their files.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN if [ "$PGO" = 1 ]; then \
        bash benches/pgo.sh \
        && install -D -m 0755 target/pgo/release/frappe-gateway /out/frappe-gateway; \
    else \
        cargo build --release --locked --bin frappe-gateway \
        && install -D -m 0755 target/release/frappe-gateway /out/frappe-gateway; \
    fi

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --home-dir /etc/frappe-gateway --no-create-home \
       --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/frappe-gateway/certs
COPY --from=build /out/frappe-gateway /usr/local/bin/frappe-gateway
WORKDIR /etc/frappe-gateway
USER 10001:10001
EXPOSE 8443 9901
# Asks the running process (the admin listener's /healthz), not just the config file.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["frappe-gateway", "health", "--url", "http://127.0.0.1:9901/healthz", "--timeout", "3s"]
ENTRYPOINT ["frappe-gateway"]
CMD ["--config", "/etc/frappe-gateway/gateway.toml"]
