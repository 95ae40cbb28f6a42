# qaas-server on a slim Debian runtime. It also holds qaas-worker and qaasctl,
# so the same image runs the single-node overlay (qaas-server --embedded, CPU)
# and CPU workers. Build from the repository root:
#   docker build -f deploy/images/server.Dockerfile -t qaas-server .
# tests/deploy checks that the runtime stage installs every library package
# the binaries link.

FROM debian:12 AS build
WORKDIR /src
COPY scripts/setup scripts/setup
RUN scripts/setup
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DQAAS_BUILD_TESTS=OFF -DQAAS_BUILD_BENCH=OFF \
 && cmake --build /build -j"$(nproc)" --target qaas-server qaas-worker qaasctl \
 && strip /build/server/qaas-server /build/worker/qaas-worker /build/cli/qaasctl

FROM debian:12-slim
# libopenblas0-pthread: libtorch's BLAS through the libblas.so.3 alternative
# (without it, netlib's reference BLAS: about 10x slower on CPU). libgomp1: the
# OpenMP runtime the small-head attention kernel's threads run on.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libabsl20220623 libgrpc++1.51 libgrpc29 libprotobuf32 \
      libprometheus-cpp-core1.0 libsqlite3-0 libpq5 libcurl4 libssl3 libpcre2-8-0 libutf8proc2 libtorch1.13 libopenblas0-pthread libgomp1 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /var/lib/qaas qaas \
 && mkdir -p /var/lib/qaas && chown qaas:qaas /var/lib/qaas
COPY --from=build /build/server/qaas-server /build/worker/qaas-worker /build/cli/qaasctl /usr/local/bin/
USER 10001:10001
ENV HOME=/tmp
WORKDIR /var/lib/qaas
EXPOSE 50051 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s CMD curl -fsS http://127.0.0.1:9464/healthz || exit 1
ENTRYPOINT ["qaas-server"]
CMD ["--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464", "--data_dir=/var/lib/qaas"]
