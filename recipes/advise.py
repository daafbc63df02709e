#!/usr/bin/env python
"""Which transfer recipe, for this data and these backbones? Measure, decide, and write a plan a recipe runs.

    python recipes/advise.py                                   # embedded: MNIST-5k, both embedded backbones
    python recipes/advise.py --dataset_name embedded:lfw --time_budget 120
    python recipes/advise.py --train_dir data/train --candidates timm/resnet50.a1_in1k,timm/convnext_tiny.fb_in22k

It prints the size and similarity tables (probe accuracy, LogME and BatchNorm shift per depth), the backbone ranking,
the scenario with the numbers behind it and the plan, and writes plan.yaml (run it unchanged with
`python recipes/finetune.py <dir>/plan.yaml` or `python recipes/linear_probe.py <dir>/plan.yaml`, as the file says),
advice.md, advice.json and advice.png. Flags: `ModelArguments`, `DataArguments`, `AdviseArguments` (`--help`).
"""


from hf_transfer_openmp import choose_wait_policy

choose_wait_policy()  # before torch loads (libgomp reads it once): see hf_transfer_openmp.py

from hf_transfer.arguments import parse_args
from hf_transfer.errors import exit_on_user_error
from hf_transfer.jobs.advise import advise_argument_types, run_advise
from hf_transfer.runtime import skip_exit_garbage_collection

PROG = "advise"  # names the command in usage and error lines


def main(args=None):
    with exit_on_user_error(PROG):
        return run_advise(*parse_args(advise_argument_types(), args, prog=PROG))


if __name__ == "__main__":
    main()
    skip_exit_garbage_collection()  # the process ends next: ~1 s less shutdown
