# adasoftmax: gRPC top-k softmax inference server, scraped by Prometheus.
#
#   docker build -t adasoftmax .
#   docker run --rm -p 50051:50051 -p 9464:9464 adasoftmax
#   docker run --rm -p 50051:50051 -p 9464:9464 -v "$PWD/models:/models:ro" adasoftmax
#
# The build stage installs the toolchain and -dev packages, builds Release and runs the unit
# tests; the runtime stage holds only the runtime libraries, the two binaries and the default
# model repository. deploy/test-image.sh builds this file unchanged with buildah.

############################################################################################
FROM debian:bookworm-slim AS build
ENV DEBIAN_FRONTEND=noninteractive
# Dependencies first, so that this layer is reused until the dependency list itself changes.
COPY deploy/install-deps.sh /tmp/install-deps.sh
RUN bash /tmp/install-deps.sh \
 && apt-get install -y -qq --no-install-recommends ccache >/dev/null
WORKDIR /src
COPY . .
# ccache keeps rebuilds after a source change short (the cache mount survives between builds).
ENV CCACHE_DIR=/root/.cache/ccache CCACHE_MAXSIZE=2G
RUN --mount=type=cache,target=/root/.cache/ccache \
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
 && cmake --build build -j"$(nproc)" \
 && ctest --test-dir build -L unit --output-on-failure -j"$(nproc)" \
 && ccache --show-stats | head -n 8
# The default model repository, made self-contained: the OCR head's files (kept in the source
# tree under tests/data) move next to its model.pbtxt, whose paths become local file names.
RUN mkdir -p /out/models \
 && cp -r deploy/models/. /out/models/ \
 && cp -r tests/data/ppocrv4-rec/. /out/models/ocr/ \
 && sed -i 's#\(\.\./\)*tests/data/ppocrv4-rec/##g' /out/models/ocr/model.pbtxt \
 && ! grep -h -v '^[[:space:]]*#' /out/models/*/model.pbtxt | grep 'tests/data'

############################################################################################
FROM debian:bookworm-slim AS runtime
ARG UID=10001
# Runtime libraries only (found with ldd on the built binaries; the check after COPY fails the
# build if one is missing).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libopenblas0-pthread libhwy1 \
      libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
      >/dev/null \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid "$UID" adasoftmax \
 && useradd --system --uid "$UID" --gid "$UID" --home-dir /var/lib/adasoftmax --create-home \
      --shell /usr/sbin/nologin adasoftmax \
 && install -d -o "$UID" -g "$UID" -m 0750 /var/cache/adasoftmax
COPY --from=build /src/build/bin/adasoftmax-server /src/build/bin/adasoftmax /usr/local/bin/
RUN ! ldd /usr/local/bin/adasoftmax-server /usr/local/bin/adasoftmax | grep 'not found'
COPY --from=build /out/models /models

# Every flag of the server falls back to ADASOFTMAX_<FLAG>; these are the image's defaults
# (flags given to docker run win).
ENV ADASOFTMAX_MODEL_REPOSITORY=/models \
    ADASOFTMAX_ADDRESS=0.0.0.0:50051 \
    ADASOFTMAX_METRICS_ADDRESS=0.0.0.0:9464 \
    ADASOFTMAX_CACHE_DIR=/var/cache/adasoftmax \
    HOME=/var/lib/adasoftmax
# gRPC, Prometheus /metrics.
EXPOSE 50051 9464
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER ${UID}:${UID}
WORKDIR /var/lib/adasoftmax
# SERVING only once every model is loaded; the synthetic LM head is generated on first start,
# hence the start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD adasoftmax health --target "127.0.0.1:${ADASOFTMAX_ADDRESS##*:}" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/adasoftmax-server"]
CMD []

LABEL org.opencontainers.image.title="adasoftmax" \
      org.opencontainers.image.description="gRPC top-k softmax inference server with adaptive sampling and Prometheus metrics" \
      org.opencontainers.image.base.name="debian:bookworm-slim"
