#!/usr/bin/env bash
# The single-GPU check, in one run of under 8 minutes, on a machine with an NVIDIA GPU and a CUDA
# build of PyTorch (transformers, numpy, tokenizers, jinja2, tqdm, safetensors installed):
#   1. the GPU tests (tests/test_gpu.py) and the device sampler's statistical test;
#   2. bench/gpu_bench.py: the sampler on the device vs copying the logits to the host, user-turn
#      latency on cuda vs cpu, and campaign throughput on cuda at concurrency 1 vs 8;
# and prints one table.  Results go to $OUT (or bench/results/) as gpu_check.json and gpu_check.log.
#
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
log="$out/gpu_check.log"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: none"
  python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), '| transformers', transformers.__version__)"
  # the package itself (its dependencies are expected on the machine; compiles the C sampler if gcc is there)
  python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -n 2
  echo "== GPU tests"
  timeout 240 python -m pytest -q -p no:cacheprovider tests/test_gpu.py \
      "tests/test_sampling_kernel.py::test_the_device_sampler_draws_from_the_reference_distribution" 2>&1 | tail -n 15
  echo "== benchmarks"
  timeout 300 python bench/gpu_bench.py --json "$out/gpu_check.json"
} 2>&1 | tee "$log"
