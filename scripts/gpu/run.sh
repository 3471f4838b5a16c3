#!/usr/bin/env bash
# The whole GPU cycle in one command, on a CUDA machine with python3 + torch + nvcc and no Node:
# unpack the carried Node and node_modules, build the CUDA addon, run the GPU test subset (and the
# CPU suite), run the benchmarks; logs go to $1 (default $OUT, else ./gpu-logs).
#   bash scripts/gpu/run.sh [LOG_DIR] [--no-cpu-tests] [--bench NAME ...]
set -uo pipefail
cd "$(dirname "$0")/../.."
logs=${1:-${OUT:-gpu-logs}}
shift || true
mkdir -p "$logs"
cpu_tests=1
benches=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-cpu-tests) cpu_tests=0 ;;
    --bench) shift; benches+=("$1") ;;
  esac
  shift
done
# Multicast over NVLink stays off on shared hosts (see the device notes).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
mkdir -p /tmp/tiller-node/bin
[[ -x /tmp/tiller-node/bin/node ]] || xz -dc .gpu/node.xz > /tmp/tiller-node/bin/node && chmod +x /tmp/tiller-node/bin/node
export PATH=/tmp/tiller-node/bin:$PATH
[[ -d node_modules ]] || tar -xJf .gpu/node_modules.tar.xz
{
  echo "node $(node --version)"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
} 2>&1 | tee "$logs/env.log"
status=0
TILLER_BUILD_JOBS=${TILLER_BUILD_JOBS:-16} node dist/scripts/setup.js 2>&1 | tee "$logs/setup.log" || status=1
[[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "setup failed"; exit 1; }
node dist/scripts/test.js --gpu 2>&1 | tee "$logs/test-gpu.log"; [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
if [[ $cpu_tests -eq 1 ]]; then
  node dist/scripts/test.js 2>&1 | tee "$logs/test-cpu.log"; [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
fi
TILLER_BENCH_OUT="$logs/bench.jsonl" node dist/bench/run.js "${benches[@]}" 2>&1 | tee "$logs/bench.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
echo "gpu cycle finished with status $status"
exit $status
