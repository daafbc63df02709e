#!/usr/bin/env python
"""Fine-tune a pretrained vision backbone on an image classification dataset.

    accelerate launch recipes/finetune.py                      # embedded default: EfficientNet-Lite0 on MNIST-5k
    python recipes/finetune.py --model_name_or_path timm/resnet50.a1_in1k --train_dir data/train --output_dir out
    python recipes/finetune.py recipes/configs/finetune_default.yaml --num_train_epochs 3

Every flag is a field of `ModelArguments`, `DataArguments`, `TransferTrainingArguments` or `TransferArguments` (`--help` lists them).
"""

import os

# Idle OpenMP threads sleep instead of spinning: on a shared CPU, spinning threads that compete with other jobs made
# training steps up to 20x slower (measured 8 s vs 0.4 s per Lite0 step); must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hf_transfer.arguments import DataArguments, ModelArguments, TransferArguments, TransferTrainingArguments, parse_args  # noqa: E402
from hf_transfer.errors import exit_on_user_error  # noqa: E402
from hf_transfer.finetuning import run_finetune  # noqa: E402


def main(args=None):
    with exit_on_user_error("finetune"):
        model_args, data_args, training_args, transfer_args = parse_args(
            (ModelArguments, DataArguments, TransferTrainingArguments, TransferArguments), args
        )
        return run_finetune(model_args, data_args, training_args, transfer_args)


if __name__ == "__main__":
    main()
