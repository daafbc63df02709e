#!/usr/bin/env python
"""Fine-tune a pretrained vision backbone on an image classification dataset.

    accelerate launch recipes/finetune.py                      # embedded default: EfficientNet-Lite0 on MNIST-5k
    python recipes/finetune.py --model_name_or_path timm/resnet50.a1_in1k --train_dir data/train --output_dir out
    python recipes/finetune.py my_run.yaml --num_train_epochs 3 --freeze fraction:0.5 --layer_decay 0.8

Every flag is a field of `ModelArguments`, `DataArguments`, `TransferTrainingArguments` or `TransferArguments`
(`--help` lists them).
"""


from hf_transfer_openmp import choose_wait_policy

choose_wait_policy()  # before torch loads (libgomp reads it once): see hf_transfer_openmp.py

from hf_transfer.arguments import finetune_argument_types, parse_args
from hf_transfer.errors import exit_on_user_error
from hf_transfer.jobs.finetune import run_finetune
from hf_transfer.runtime import skip_exit_garbage_collection

PROG = "finetune"  # names the command in usage and error lines


def main(args=None):
    with exit_on_user_error(PROG):
        return run_finetune(*parse_args(finetune_argument_types(), args, prog=PROG))


if __name__ == "__main__":
    from hf_transfer.budget import charge_from_process_start

    charge_from_process_start()  # --time_budget counts the whole process: its start and imports too
    main()
    skip_exit_garbage_collection()  # the process ends next: ~1 s less shutdown
