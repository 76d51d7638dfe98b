# The operator image the Helm chart runs. (Not built in this repository's CI: it has no
# container engine. Build it where you build images: `docker build -t tooljet-operator:0.1.0 .`)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tooljet-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tooljet-operator /usr/local/bin/tooljet-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tooljet-operator"]
