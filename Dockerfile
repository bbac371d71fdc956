# Dockerfile -- container image of the incentives processor.
# Build: docker build -t incentives .   Run: docker run incentives [process|produce|awards ...]
# Configure with INCENTIVES__* environment variables (e.g. INCENTIVES__KAFKA__BROKERS,
# INCENTIVES__REDIS__URL, INCENTIVES__HTTP__LISTEN); see docker-compose.yml.

FROM rust:1-bookworm AS builder
WORKDIR /src
# Only what the build needs (no .dockerignore: keeps target/ and .local/ out of the image).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY schemas ./schemas
RUN cargo build --release --locked \
 && install -m 0755 target/release/incentives /usr/local/bin/incentives

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin incentives
COPY --from=builder /usr/local/bin/incentives /usr/local/bin/incentives
COPY --from=builder /src/config /app/config
COPY --from=builder /src/schemas /app/schemas
WORKDIR /app
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["incentives"]
CMD ["process"]
