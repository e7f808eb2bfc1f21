# syntax=docker/dockerfile:1
# Shoal container image: one `shoal` binary; the Helm chart (helm/shoal) runs it as scheduler, seed peer and
# node daemon. Build: docker build -t shoal:dev .
# (BuildKit cache mounts keep the cargo registry and target/ between builds; they are not in the image.)

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin shoal \
 && install -m 0755 target/release/shoal /usr/local/bin/shoal

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 shoal \
 && useradd --system --uid 10001 --gid shoal --home-dir /var/lib/shoal --shell /usr/sbin/nologin shoal \
 && install -d -o shoal -g shoal -m 0750 /var/lib/shoal
COPY --from=build /usr/local/bin/shoal /usr/local/bin/shoal
# Non-root by default; the chart sets the user per component (see helm/shoal/values.yaml).
USER 10001:10001
# auto: probe io_uring at start, fall back to pread/pwrite where seccomp refuses it (and log which runs).
ENV SHOAL_IO_ENGINE=auto
# 65001 proxy, 65002 upload (peers), 65003 metrics and health, 8002 scheduler
EXPOSE 65001 65002 65003 8002
ENTRYPOINT ["shoal"]
CMD ["daemon", "--data-dir", "/var/lib/shoal"]
