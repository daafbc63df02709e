#!/usr/bin/env bash
# GPU check (bench/gpu_check.py): speed, loader, FSDP2 x BatchNorm x bf16, and the recipes/accelerate configs on the
# real recipe (DDP on 2 GPUs when present, DeepSpeed, LoRA, resume). One command, under 10 minutes on one GPU.
# Exit 0 only when every part ran and passed: a skipped part (time, DeepSpeed missing, one GPU for DDP) is not ok.
# Writes bench/results/gpu_check.json (and $OUT/gpu_check.json when $OUT is set). Extra flags go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import torch, timm, transformers, accelerate, datasets, hf_transfer" 2>/dev/null; then
    echo "gpu_check: the environment lacks hf_transfer's dependencies; run: pip install -e '.[dev]' (and '.[deepspeed]' for ZeRO)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# SIGTERM at 590 s: gpu_check.py kills its child process group and exits; SIGKILL 10 s later if it has not
exec timeout --signal TERM --kill-after 10 590 python bench/gpu_check.py "$@"
