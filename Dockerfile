# syntax=docker/dockerfile:1
# Ferry's three images, for your CI (`make images` builds the same ones without Docker, from
# Debian packages; both assemble the root filesystems with scripts/image-rootfs.sh):
#
#   VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
#   docker build --target ferry          --build-arg VERSION=$VERSION -t registry.example/ferry:$VERSION .
#   docker build --target ferry-operator --build-arg VERSION=$VERSION -t registry.example/ferry-operator:$VERSION .
#   docker build --target etcd           --build-arg VERSION=$VERSION -t registry.example/etcd:$VERSION .
#
# Tag with Cargo's version (the charts' appVersion), never `latest`. Each final image is FROM
# scratch: the binaries, the shared libraries ldd finds for them, the CA bundle and an
# /etc/passwd with the numeric user 10001. No shell, no package manager.

ARG VERSION=0.0.0-dev

# --- build: the release binaries -------------------------------------------------------------
FROM docker.io/library/rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && cp target/release/ferry-vault target/release/ferry-sidecar target/release/ferry-operator /out/

# --- rootfs: the three root filesystems, from this Debian (the same release as the build) -------
FROM docker.io/library/debian:bookworm-slim AS rootfs
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates etcd-server \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /out/
COPY scripts/image-rootfs.sh /usr/local/bin/image-rootfs.sh
# `install` goes into the ferry image: the pods' init containers copy the key files with it
# (see charts/ferry/templates/statefulset.yaml).
RUN image-rootfs.sh /rootfs/ferry / ferry \
      /out/ferry-vault:/usr/local/bin/ferry-vault \
      /out/ferry-sidecar:/usr/local/bin/ferry-sidecar \
      /usr/bin/install:/usr/bin/install \
 && image-rootfs.sh /rootfs/ferry-operator / ferry-operator \
      /out/ferry-operator:/usr/local/bin/ferry-operator \
 && image-rootfs.sh /rootfs/etcd / etcd /usr/bin/etcd:/usr/bin/etcd

# --- the images ---------------------------------------------------------------------------------
FROM scratch AS ferry
ARG VERSION
COPY --from=rootfs /rootfs/ferry/ /
COPY --from=rootfs --chown=10001:10001 /rootfs/ferry/var/run/ferry/ /var/run/ferry/
COPY --from=rootfs --chown=10001:10001 /rootfs/ferry/var/run/ferry-keys/ /var/run/ferry-keys/
ENV PATH=/usr/local/bin:/usr/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title=ferry org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.licenses=Apache-2.0
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/ferry-vault"]

FROM scratch AS ferry-operator
ARG VERSION
COPY --from=rootfs /rootfs/ferry-operator/ /
ENV PATH=/usr/local/bin:/usr/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title=ferry-operator org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.licenses=Apache-2.0
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/ferry-operator"]
CMD ["run"]

FROM scratch AS etcd
ARG VERSION
COPY --from=rootfs /rootfs/etcd/ /
COPY --from=rootfs --chown=10001:10001 /rootfs/etcd/var/lib/etcd/ /var/lib/etcd/
ENV PATH=/usr/local/bin:/usr/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title=etcd org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.licenses=Apache-2.0
USER 10001:10001
ENTRYPOINT ["/usr/bin/etcd"]
