# The operator image for those who build with docker. `cargo xtask image` builds the equivalent
# image without a container engine (see docs/images-and-pods.md): the same static binaries at the same
# paths, user 65532, entrypoint, platform and labels, on an equivalent base (nonroot user, /tmp,
# CA certificates).
#   docker build --platform linux/amd64 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t tooljet-operator:0.1.0 .
FROM --platform=linux/amd64 rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=/src=/build" \
    cargo build --release --locked -p tooljet-operator --bin tooljet-operator \
      -p kubectl-tooljet --bin kubectl-tooljet --target x86_64-unknown-linux-gnu

FROM --platform=linux/amd64 gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.source="https://github.com/tooljet/tooljet-operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.title="tooljet-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/tooljet-operator /usr/local/bin/tooljet-operator
# The kubectl plugin: the chart's opt-in web dashboard runs `kubectl-tooljet dashboard --forward-token`.
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/kubectl-tooljet /usr/local/bin/kubectl-tooljet
USER 65532:65532
WORKDIR /
ENTRYPOINT ["/usr/local/bin/tooljet-operator"]
