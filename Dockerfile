# syntax=docker/dockerfile:1
#
# flock's container images (docs/deployment.md).
#
#   docker build -t flock .                      # CPU image: the default target, the last stage
#   docker build --target cuda -t flock:cuda .   # NVIDIA GPUs (run with --gpus all)
#
# Both build flock's native llama.cpp addon from the llama.cpp source bundled in node-llama-cpp
# (npm ci's postinstall, engine/native/build.ts) in a build stage, and copy only the installed
# node_modules into a slim runtime stage that runs as the non-root user "flock".
#
# llama.cpp is built portable, as node-llama-cpp's own prebuilt binaries are: GGML_NATIVE=OFF
# (no -march=native of the build machine) and one CPU backend per x86/ARM feature level, the
# best one picked at run time (GGML_CPU_ALL_VARIANTS with GGML_BACKEND_DL, which also lets the
# CUDA build's load check pass on a build machine without a GPU driver). For an image tuned to
# the build machine's own CPU, and a much shorter build:
#   --build-arg GGML_NATIVE=ON --build-arg GGML_CPU_ALL_VARIANTS=OFF
# node-llama-cpp finds a local build by a folder name that hashes these NODE_LLAMA_CPP_CMAKE_OPTION_*
# variables, so every runtime stage carries the same values as its build stage
# (deploy/lint-dockerfile.ts checks that).
#
# CI cannot run Docker. deploy/lint-dockerfile.ts lints this file, and deploy/replay-dockerfile.ts
# replays the cpu target on the host: it copies what the COPY lines copy (through .dockerignore)
# and runs every RUN line except those marked "replay: skip" (system packages and users, which
# only make sense inside the image), then starts the server with the image's ENTRYPOINT, ENV and
# HEALTHCHECK. Keep RUN lines that are not marked runnable from WORKDIR with relative paths.

ARG NODE_VERSION=20
ARG DEBIAN_RELEASE=bookworm
ARG CUDA_VERSION=12.6.3
ARG UBUNTU_VERSION=24.04
ARG GGML_NATIVE=OFF
ARG GGML_CPU_ALL_VARIANTS=ON
# Machine code for Ampere (80, 86), Ada (89) and Hopper (90); PTX (75, 80) that the driver
# compiles on first use for Turing and for GPUs newer than Hopper (cached in CUDA_CACHE_PATH).
ARG CUDA_ARCHITECTURES="75-virtual;80;86-real;89-real;90-real"

# ---------------------------------------------------------------------------------------------
# CPU: build stage
FROM node:${NODE_VERSION}-${DEBIAN_RELEASE}-slim AS cpu-build
ARG GGML_NATIVE
ARG GGML_CPU_ALL_VARIANTS
# replay: skip (system packages: the CI host has the same toolchain for its own npm ci)
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ git make ninja-build \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_LLAMA_CPP_CMAKE_OPTION_GGML_NATIVE=${GGML_NATIVE} \
    NODE_LLAMA_CPP_CMAKE_OPTION_GGML_CPU_ALL_VARIANTS=${GGML_CPU_ALL_VARIANTS} \
    NODE_LLAMA_CPP_CMAKE_OPTION_GGML_BACKEND_DL=ON
# Only what npm ci and the native build read, so that this slow layer is rebuilt only when the
# lock file or flock's native sources change.
COPY package.json package-lock.json ./
COPY engine/native/ engine/native/
COPY deploy/image/ deploy/image/
# Production dependencies (tsx, which runs flock, is one); the postinstall builds the addon.
RUN npm ci --omit=dev --no-audit --no-fund
# The postinstall only warns when the build fails (flock then runs on the prebuilt binary);
# an image must not ship that silently.
RUN node deploy/image/check-native.mjs
RUN sh deploy/image/prune.sh

# ---------------------------------------------------------------------------------------------
# CUDA: Node from the official image, the toolchain from NVIDIA's
FROM node:${NODE_VERSION}-${DEBIAN_RELEASE}-slim AS node-dist

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS cuda-build
ARG GGML_NATIVE
ARG GGML_CPU_ALL_VARIANTS
ARG CUDA_ARCHITECTURES
COPY --from=node-dist /usr/local/bin/node /usr/local/bin/node
COPY --from=node-dist /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
# replay: skip (system packages and the npm links: only inside the image)
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
    && apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ git make ninja-build \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV FLOCK_NATIVE_GPU=cuda \
    CUDACXX=/usr/local/cuda/bin/nvcc \
    NODE_LLAMA_CPP_CMAKE_OPTION_GGML_NATIVE=${GGML_NATIVE} \
    NODE_LLAMA_CPP_CMAKE_OPTION_GGML_CPU_ALL_VARIANTS=${GGML_CPU_ALL_VARIANTS} \
    NODE_LLAMA_CPP_CMAKE_OPTION_GGML_BACKEND_DL=ON \
    NODE_LLAMA_CPP_CMAKE_OPTION_CMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}
COPY package.json package-lock.json ./
COPY engine/native/ engine/native/
COPY deploy/image/ deploy/image/
RUN npm ci --omit=dev --no-audit --no-fund
RUN node deploy/image/check-native.mjs
RUN sh deploy/image/prune.sh

# CUDA: runtime image
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS cuda
ARG GGML_NATIVE
ARG GGML_CPU_ALL_VARIANTS
ARG CUDA_ARCHITECTURES
COPY --from=node-dist /usr/local/bin/node /usr/local/bin/node
# replay: skip (system packages and the user: only inside the image)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 flock \
    && useradd --system --uid 10001 --gid flock --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin flock \
    && mkdir -p /models /cache \
    && chown flock:flock /cache
WORKDIR /app
ENV NODE_ENV=production \
    FLOCK_HOST=0.0.0.0 \
    FLOCK_PORT=8080 \
    FLOCK_CACHE_DIR=/cache \
    CUDA_CACHE_PATH=/cache/cuda-jit \
    NODE_LLAMA_CPP_CMAKE_OPTION_GGML_NATIVE=${GGML_NATIVE} \
    NODE_LLAMA_CPP_CMAKE_OPTION_GGML_CPU_ALL_VARIANTS=${GGML_CPU_ALL_VARIANTS} \
    NODE_LLAMA_CPP_CMAKE_OPTION_GGML_BACKEND_DL=ON \
    NODE_LLAMA_CPP_CMAKE_OPTION_CMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}
COPY --from=cuda-build /app/node_modules/ node_modules/
COPY package.json package-lock.json tsconfig.json ./
COPY server/ server/
COPY pipelines/ pipelines/
COPY decoding/ decoding/
COPY experts/ experts/
COPY engine/ engine/
COPY forge/ forge/
COPY tools/ tools/
COPY deploy/image/healthcheck.mjs deploy/image/
USER flock
VOLUME ["/cache"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 CMD ["node", "deploy/image/healthcheck.mjs"]
ENTRYPOINT ["node", "--import", "tsx", "server/main.ts"]
CMD []

# ---------------------------------------------------------------------------------------------
# CPU: runtime image (last, so that a plain `docker build` builds it)
FROM node:${NODE_VERSION}-${DEBIAN_RELEASE}-slim AS cpu
ARG GGML_NATIVE
ARG GGML_CPU_ALL_VARIANTS
# replay: skip (system packages and the user: only inside the image)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 flock \
    && useradd --system --uid 10001 --gid flock --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin flock \
    && mkdir -p /models /cache \
    && chown flock:flock /cache
WORKDIR /app
ENV NODE_ENV=production \
    FLOCK_HOST=0.0.0.0 \
    FLOCK_PORT=8080 \
    FLOCK_CACHE_DIR=/cache \
    NODE_LLAMA_CPP_CMAKE_OPTION_GGML_NATIVE=${GGML_NATIVE} \
    NODE_LLAMA_CPP_CMAKE_OPTION_GGML_CPU_ALL_VARIANTS=${GGML_CPU_ALL_VARIANTS} \
    NODE_LLAMA_CPP_CMAKE_OPTION_GGML_BACKEND_DL=ON
COPY --from=cpu-build /app/node_modules/ node_modules/
COPY package.json package-lock.json tsconfig.json ./
COPY server/ server/
COPY pipelines/ pipelines/
COPY decoding/ decoding/
COPY experts/ experts/
COPY engine/ engine/
COPY forge/ forge/
COPY tools/ tools/
COPY deploy/image/healthcheck.mjs deploy/image/
USER flock
VOLUME ["/cache"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 CMD ["node", "deploy/image/healthcheck.mjs"]
ENTRYPOINT ["node", "--import", "tsx", "server/main.ts"]
CMD []
