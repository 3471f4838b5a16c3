#!/usr/bin/env bash
# Prepares, on a machine with Node and the npm registry, what scripts/gpu/run.sh needs on a GPU
# machine that has python3 + torch + nvcc but no Node and no network:
#   .gpu/node.xz                 this machine's node binary, xz-compressed (≈ 24 MB)
#   .gpu/node_modules.tar.xz     the production node_modules (npm ci --omit=dev)
#   dist/                        the compiled TypeScript (npm run build)
# Carry `.gpu` and `dist` (both git-ignored) to the GPU machine beside the working tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .gpu
npx tsc -p .
if [[ ! -f .gpu/node.xz || "$(command -v node)" -nt .gpu/node.xz ]]; then
  xz -T2 -c "$(command -v node)" > .gpu/node.xz
fi
stamp=$(sha256sum package-lock.json | cut -c1-16)
if [[ ! -f .gpu/node_modules.tar.xz || "$(cat .gpu/node_modules.stamp 2>/dev/null)" != "$stamp" ]]; then
  tmp=$(mktemp -d)
  cp package.json package-lock.json "$tmp/"
  (cd "$tmp" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null)
  tar -C "$tmp" -cJf .gpu/node_modules.tar.xz node_modules
  echo "$stamp" > .gpu/node_modules.stamp
  rm -rf "$tmp"
fi
du -sh .gpu/* dist | sed 's/^/[pack] /'
