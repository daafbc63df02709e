#!/usr/bin/env bash
# GPU check: bf16/fp16 speed and peak memory of ResNet-50 and ViT-B/16, then the recipes/accelerate configs on the
# real recipe (FSDP v2, and DeepSpeed ZeRO-2/3 when deepspeed imports). One CUDA GPU, under 5 minutes on an H200.
# Writes bench/results/gpu_check.json (and $OUT/gpu_check.json when $OUT is set). Extra flags go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import torch, timm, transformers, accelerate, datasets, hf_transfer" 2>/dev/null; then
    echo "gpu_check: the environment lacks hf_transfer's dependencies; run: pip install -e '.[dev]' (and '.[deepspeed]' for ZeRO)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 600 python bench/gpu_check.py "$@"
