# The GPU worker: qaas-worker (and qaas-server, for a single-node GPU pod)
# built against PyTorch's CUDA libtorch, on Debian with the CUDA libraries that
# libtorch bundles. Build from the repository root:
#   docker build -f deploy/images/worker.Dockerfile -t qaas-worker .
#   (--build-arg LIBTORCH_URL=... for another CUDA version)
# The nodes need the NVIDIA driver and device plugin; the container needs no
# CUDA toolkit. The CUDA build of qaas itself is tracked by the GPU issue.

ARG LIBTORCH_URL=https://download.pytorch.org/libtorch/cu121/libtorch-cxx11-abi-shared-with-deps-2.3.1%2Bcu121.zip

FROM debian:12 AS build
ARG LIBTORCH_URL
WORKDIR /src
COPY scripts/setup scripts/setup
RUN scripts/setup \
 && apt-get install -y --no-install-recommends unzip \
 && curl -fsSL -o /tmp/libtorch.zip "$LIBTORCH_URL" \
 && unzip -q /tmp/libtorch.zip -d /opt && rm /tmp/libtorch.zip
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DQAAS_BUILD_TESTS=OFF -DQAAS_BUILD_BENCH=OFF \
      -DCMAKE_PREFIX_PATH=/opt/libtorch \
 && cmake --build /build -j"$(nproc)" --target qaas-worker qaas-server qaasctl \
 && strip /build/server/qaas-server /build/worker/qaas-worker /build/cli/qaasctl

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libabsl20220623 libgrpc++1.51 libgrpc29 libprotobuf32 \
      libprometheus-cpp-core1.0 libsqlite3-0 libpq5 libcurl4 libssl3 libpcre2-8-0 libutf8proc2 libgomp1 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /scratch qaas
# libtorch with its bundled CUDA runtime, cuBLAS and cuDNN.
COPY --from=build /opt/libtorch/lib /opt/libtorch/lib
COPY --from=build /build/worker/qaas-worker /build/server/qaas-server /build/cli/qaasctl /usr/local/bin/
ENV LD_LIBRARY_PATH=/opt/libtorch/lib HOME=/tmp \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 9465
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s CMD curl -fsS http://127.0.0.1:9465/healthz || exit 1
ENTRYPOINT ["qaas-worker"]
CMD ["--device=cuda", "--metrics_listen=0.0.0.0:9465", "--work_dir=/scratch"]
