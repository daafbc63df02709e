#!/usr/bin/env python
"""Cross-validate a fine-tune (or a linear probe) over stratified folds of the training data.

    python recipes/cross_validate.py --folds 3                       # embedded default: EfficientNet-Lite0 on MNIST-5k
    python recipes/cross_validate.py --folds 5 --search learning_rate=3e-3,1e-2 --num_train_epochs 2
    python recipes/cross_validate.py --recipe linear_probe --folds 5 --layers pooled --train_dir data/train

Every flag of the chosen recipe (``--recipe finetune``, the default, or ``linear_probe``) passes to each fold's
run; ``--seed`` seeds the folds and the runs, ``--output_dir`` gets cv_results.json / .md / .png and
all_results.json (last). The validation split is held out of every fold (``--refit`` scores the chosen setting on
it). Flags: the recipe's dataclasses plus `CVArguments` (`--help` lists them).
"""


from hf_transfer_openmp import choose_wait_policy

choose_wait_policy()  # before torch loads (libgomp reads it once): see hf_transfer_openmp.py

from hf_transfer.errors import exit_on_user_error
from hf_transfer.jobs.cross_validate import run_cross_validation
from hf_transfer.runtime import skip_exit_garbage_collection

PROG = "cross_validate"  # names the command in usage and error lines


def main(args=None):
    with exit_on_user_error(PROG):
        return run_cross_validation(args, prog=PROG)


if __name__ == "__main__":
    main()
    skip_exit_garbage_collection()  # the process ends next: ~1 s less shutdown
