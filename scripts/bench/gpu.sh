#!/usr/bin/env bash
# The trainer on the GPU machine (ENVIRONMENT.md, "GPU machine"): builds the addon against the
# CUDA torch in /opt/torch/.venv and runs scripts/bench/gpu-run.ts, which reports CNN samples/s
# at batch 256 and 1024 and the test accuracy after one epoch.
#
# That machine has no Node.js and no npm registry, and nothing persists between calls. Prepare
# here (the carried paths must stay under 64 MiB):
#   mkdir -p .carry && xz -T2 -c "$(command -v node)" > .carry/node.xz   # .carry/ is gitignored
#   npx tsc -p tsconfig.json                                              # dist/
# then run through the device tool with
#   carry: [".carry", "dist", "node_modules/node-addon-api", "node_modules/node-api-headers"]
#   command: xz -dc .carry/node.xz > .carry/node && chmod +x .carry/node &&
#            export PATH=$PWD/.carry:$PATH && scripts/bench/gpu.sh
# The Fashion-MNIST files must be there too (O3_FASHION_MNIST names their directory): carry
# them in, e.g. copied to .carry/fashion-mnist (about 30 MiB gzipped).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/../.."

# Its python3 gives install-libtorch the CUDA torch's CMake prefix (step 2 of its order).
export PATH=/opt/torch/.venv/bin:$PATH
prefix=$(scripts/install-libtorch --print-prefix --cuda)
echo "libtorch: $prefix" >&2

# Plain CMake: cmake-js and its dependencies are not carried. cmake-js would pass the N-API
# headers as CMAKE_JS_INC and put the addon in build/Release; do the same.
cmake -S . -B build -G "Unix Makefiles" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_JS_INC="$PWD/node_modules/node-api-headers/include" \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/build/Release" >&2
cmake --build build --parallel "$(nproc)" >&2

export O3_FASHION_MNIST=${O3_FASHION_MNIST:-$PWD/.carry/fashion-mnist}
node dist/scripts/bench/gpu-run.js
