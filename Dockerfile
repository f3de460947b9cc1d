# Placeholder until the deployment issue: the real multi-stage image (build
# with tools/setup.sh + CMake, slim runtime with the torch wheel's shared
# libraries, non-root) is specified there. This stage only documents the
# build environment the project expects.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY . .
RUN tools/setup.sh && tools/build.sh
ENTRYPOINT ["/src/build/client/preflight"]
