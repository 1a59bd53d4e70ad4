#!/bin/sh
# Run in the image's build stages (in /app, after npm ci and check-native.mjs; see the Dockerfile):
# drops from node_modules what the runtime stage does not need, before it copies node_modules.
#  - llama.cpp's sources, the git bundle they came from and the pristine addon copy: only
#    engine/native/build.ts reads them, at install time. Two vocabulary files stay (taken from
#    the bundle where the source was not unpacked): the tokenizers the forge gives the built-in
#    demo's models (forge/tokenizers.ts);
#  - the cmake build tree of flock's native build: node-llama-cpp loads a local build from its
#    Release/ folder and checks buildDone.status, nothing else;
#  - node-llama-cpp's prebuilt binaries for GPUs and other platforms (flock's own build replaces
#    them). The CPU one for this platform stays: node-llama-cpp falls back to it when the local
#    build does not fit the GPU setting, e.g. the CUDA image started without a GPU.
set -eu
llama=node_modules/node-llama-cpp/llama
kept=$(mktemp -d)
for name in qwen2 llama-bpe; do
  file="ggml-vocab-$name.gguf"
  if [ -f "$llama/llama.cpp/models/$file" ]; then
    cp "$llama/llama.cpp/models/$file" "$kept/"
  else
    [ -d "$kept/repo" ] || { git init -q --bare "$kept/repo" && git -C "$kept/repo" fetch -q "$PWD/$llama/gitRelease.bundle" HEAD; }
    git -C "$kept/repo" show "FETCH_HEAD:models/$file" > "$kept/$file"
  fi
done
rm -rf "$llama/llama.cpp" "$llama/gitRelease.bundle" "$llama/.flock-pristine-addon" "$kept/repo"
mkdir -p "$llama/llama.cpp/models"
mv "$kept"/*.gguf "$llama/llama.cpp/models/"
rmdir "$kept"
for build in "$llama"/localBuilds/*/; do
  find "$build" -mindepth 1 -maxdepth 1 ! -name Release ! -name buildDone.status -exec rm -rf {} +
done
keep="linux-$(node -p process.arch)"
for pkg in node_modules/@node-llama-cpp/*; do
  [ "$(basename "$pkg")" = "$keep" ] || rm -rf "$pkg"
done
echo "flock image: node_modules is $(du -sh node_modules | cut -f1) after pruning"
