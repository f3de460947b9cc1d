# Preflight server image. Multi-stage: the build stage uses the project's own
# setup script and CMake; the runtime stage carries only the binaries, their
# Debian runtime libraries and the pinned torch wheel's shared libraries
# (CUDA ones included, so the same image runs on GPU nodes under the NVIDIA
# container runtime and on CPU). Built by tools/image.sh (buildah), because
# no container registry is reachable here: BASE_IMAGE is a local base made
# with debootstrap.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive
# Where the build host reaches the package index through a TLS-inspecting
# proxy, tools/image.sh mounts the host's CA bundle and points pip at it.
ARG PIP_CERT
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      python3 python3-pip ca-certificates >/dev/null
WORKDIR /src
COPY . .
# The build profile: no test-only packages (Slurm, munge, Prometheus, clang),
# whose post-install scripts need more than buildah's chroot isolation
# gives; tests/e2e/dockerfile_test.py holds this stage to it.
RUN tools/setup.sh --profile build \
 && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPREFLIGHT_PYTHON=python3 \
      -DPREFLIGHT_FUZZ=OFF -DPREFLIGHT_TESTS=OFF >/dev/null \
 && cmake --build build -j 2 --target preflight-server preflight-worker preflight preflight-thin \
      preflight_python_client \
 && TORCH_DIR=$(python3 -c "import os, torch; print(os.path.dirname(torch.__file__))") \
 && mkdir -p /out/bin /out/torch \
 && cp build/service/preflight-server build/service/preflight-worker build/client/preflight \
      build/client/preflight-thin /out/bin/ \
 && echo "$TORCH_DIR" > /out/torch_dir

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libabsl20220623 libsqlite3-0 libssl3 libseccomp2 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libpq5 libgomp1 ca-certificates \
      python3 >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin preflight \
 && mkdir -p /var/lib/preflight && chown preflight:preflight /var/lib/preflight
# The binaries' RPATH names the wheel's lib directory, and libtorch_cuda finds
# the CUDA runtime as ../../nvidia: keep the wheel's layout.
COPY --from=build /usr/local/lib/python3.11/dist-packages/torch/lib \
     /usr/local/lib/python3.11/dist-packages/torch/lib
COPY --from=build /usr/local/lib/python3.11/dist-packages/nvidia \
     /usr/local/lib/python3.11/dist-packages/nvidia
COPY --from=build /out/bin /opt/preflight/bin
# The admission gate (Python, on the project's client and the pinned grpcio /
# protobuf wheels): python3 /opt/preflight/gates/k8s/preflight_gate.py.
COPY --from=build /usr/local/lib/python3.11/dist-packages/grpc \
     /usr/local/lib/python3.11/dist-packages/grpc
COPY --from=build /usr/local/lib/python3.11/dist-packages/google \
     /usr/local/lib/python3.11/dist-packages/google
COPY --from=build /usr/local/lib/python3.11/dist-packages/typing_extensions.py \
     /usr/local/lib/python3.11/dist-packages/typing_extensions.py
# Signature checks of the gate's --verify-key (cryptography and its cffi).
COPY --from=build /usr/local/lib/python3.11/dist-packages/cryptography \
     /usr/local/lib/python3.11/dist-packages/cryptography
COPY --from=build /usr/local/lib/python3.11/dist-packages/cffi \
     /usr/local/lib/python3.11/dist-packages/cffi
COPY --from=build /usr/local/lib/python3.11/dist-packages/_cffi_backend*.so \
     /usr/local/lib/python3.11/dist-packages/
COPY --from=build /src/build/python/preflight /usr/local/lib/python3.11/dist-packages/preflight
COPY client/gates/k8s /opt/preflight/gates/k8s
USER 10001
VOLUME ["/var/lib/preflight"]
EXPOSE 50051 9464
ENTRYPOINT ["/opt/preflight/bin/preflight-server"]
CMD ["--address=0.0.0.0:50051", "--metrics_address=0.0.0.0:9464", "--store=/var/lib/preflight"]
