#!/bin/sh
# Run in the image's build stages (in /app, after npm ci and check-native.mjs; see the Dockerfile):
# drops from node_modules what the runtime stage does not need, before it copies node_modules.
#  - llama.cpp's sources, the git bundle they came from and the pristine addon copy: only
#    engine/native/build.ts reads them, at install time;
#  - the cmake build tree of flock's native build: node-llama-cpp loads a local build from its
#    Release/ folder and checks buildDone.status, nothing else;
#  - node-llama-cpp's prebuilt binaries for GPUs and other platforms (flock's own build replaces
#    them). The CPU one for this platform stays: node-llama-cpp falls back to it when the local
#    build does not fit the GPU setting, e.g. the CUDA image started without a GPU.
set -eu
llama=node_modules/node-llama-cpp/llama
rm -rf "$llama/llama.cpp" "$llama/gitRelease.bundle" "$llama/.flock-pristine-addon"
for build in "$llama"/localBuilds/*/; do
  find "$build" -mindepth 1 -maxdepth 1 ! -name Release ! -name buildDone.status -exec rm -rf {} +
done
keep="linux-$(node -p process.arch)"
for pkg in node_modules/@node-llama-cpp/*; do
  [ "$(basename "$pkg")" = "$keep" ] || rm -rf "$pkg"
done
echo "flock image: node_modules is $(du -sh node_modules | cut -f1) after pruning"
