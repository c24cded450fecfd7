# syntax=docker/dockerfile:1
# The Sluice controller image: a release build on Debian 12, run on distroless's cc image (glibc,
# libgcc, OpenSSL and the CA bundle; no shell, no package manager) as the non-root user 65532,
# plus zlib, which git2 (the Git revert, src/gitops/) links and distroless does not ship.
#
#   docker build -t ghcr.io/sluice-rs/sluice:0.1.0 --build-arg SLUICE_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
#
# Machines that cannot pull base images (no registry access) build the same image with
# deploy/image/build: FROM scratch + this binary + exactly the shared libraries it links + the CA
# bundle, as an OCI archive (see deploy/README.md).

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The build context has no .git (.dockerignore): the commit comes in as an argument.
ARG SLUICE_GIT_COMMIT=unknown
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    SLUICE_GIT_COMMIT=${SLUICE_GIT_COMMIT} cargo build --release --locked --bin sluice \
    && strip -o /sluice target/release/sluice \
    && cp -L /lib/$(gcc -dumpmachine)/libz.so.1 /libz.so.1

FROM gcr.io/distroless/cc-debian12:nonroot
ARG SLUICE_GIT_COMMIT=unknown
ARG SLUICE_VERSION=0.1.0
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Progressive delivery controller for Kubernetes, wire-compatible with Argo Rollouts and Flagger" \
      org.opencontainers.image.source="https://github.com/sluice-rs/sluice" \
      org.opencontainers.image.version="${SLUICE_VERSION}" \
      org.opencontainers.image.revision="${SLUICE_GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /sluice /sluice
COPY --from=build /libz.so.1 /usr/lib/libz.so.1
USER 65532:65532
ENTRYPOINT ["/sluice"]
CMD ["controller"]
