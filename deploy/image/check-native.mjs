// Run in the image's build stages right after `npm ci` (see the Dockerfile): fails the build
// unless flock's native llama.cpp addon was built for the backend the stage asks for.
// `npm ci`'s postinstall (engine/native/build.ts --postinstall) only warns when the build fails,
// so that a developer's install still works on node-llama-cpp's prebuilt binary; an image must
// not ship that way silently. build.ts writes its stamp only after the build loaded through
// getLlama() with flock's methods present, so the stamp is the proof of a good build.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const localBuilds = "node_modules/node-llama-cpp/llama/localBuilds";
const stampFile = join(localBuilds, "flock-native.json");
const gpu = process.env.FLOCK_NATIVE_GPU ?? "false";

function fail(message) {
  console.error(`flock image: ${message}`);
  process.exit(1);
}

if (!existsSync(stampFile)) fail(`${stampFile} is missing: the native build failed or was skipped (see npm ci's output above)`);
const stamp = JSON.parse(readFileSync(stampFile, "utf8"));
if (stamp.gpu !== gpu) fail(`the native build is for gpu=${stamp.gpu}, this stage asks for FLOCK_NATIVE_GPU=${gpu}`);

const builds = readdirSync(localBuilds, { withFileTypes: true })
  .filter((d) => d.isDirectory())
  .map((d) => d.name)
  .filter((name) => existsSync(join(localBuilds, name, "buildDone.status")) && existsSync(join(localBuilds, name, "Release", "llama-addon.node")));
if (builds.length !== 1) fail(`expected one finished local build in ${localBuilds}, found ${builds.length} (${builds.join(", ")})`);
const release = join(localBuilds, builds[0], "Release");
if (gpu === "cuda" && !readdirSync(release).some((f) => f.includes("ggml-cuda"))) fail(`no CUDA backend (ggml-cuda) in ${release}`);
console.log(`flock image: native extension built (${builds[0]}, gpu=${gpu}, ${stamp.builtAt})`);
