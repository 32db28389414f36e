# Multi-stage build of frappe-gateway. The runtime image holds only the binary and CA roots.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin frappe-gateway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /etc/frappe-gateway gateway
COPY --from=build /src/target/release/frappe-gateway /usr/local/bin/frappe-gateway
WORKDIR /etc/frappe-gateway
USER gateway
EXPOSE 8443 9901
ENTRYPOINT ["frappe-gateway"]
CMD ["--config", "/etc/frappe-gateway/gateway.toml"]
