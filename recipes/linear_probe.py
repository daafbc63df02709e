#!/usr/bin/env python
"""Linear probes on a frozen backbone's cached features, per depth, exported as a model folder.

    python recipes/linear_probe.py                          # embedded default: EfficientNet-Lite0 on MNIST-5k, 96 px
    python recipes/linear_probe.py --layers all --probe logreg,linear_svm --output_dir out/probe
    python recipes/linear_probe.py --model_name_or_path timm/resnet50.a1_in1k --train_dir data/train --layers pooled

Features are cached (``~/.cache/hf_transfer/features`` or ``$HF_TRANSFER_CACHE``): a rerun, or another --probe,
skips the backbone. The folder gets all_results.json (per layer, per probe), probe_table.txt, a per-depth plot and
the best linear probe as a model: a pooled-depth probe loads with plain transformers, an earlier-depth one with
``trust_remote_code=True`` (its code is written beside the weights) or after ``import hf_transfer``.
Flags: `ModelArguments`, `DataArguments`, `ProbeArguments` (`--help` lists them).
"""


from hf_transfer_openmp import choose_wait_policy

choose_wait_policy()  # before torch loads (libgomp reads it once): see hf_transfer_openmp.py

from hf_transfer.arguments import parse_args
from hf_transfer.errors import exit_on_user_error
from hf_transfer.jobs.probe import probe_argument_types, run_linear_probe
from hf_transfer.runtime import skip_exit_garbage_collection

PROG = "linear_probe"  # names the command in usage and error lines


def main(args=None):
    with exit_on_user_error(PROG):
        return run_linear_probe(*parse_args(probe_argument_types(), args, prog=PROG))


if __name__ == "__main__":
    main()
    skip_exit_garbage_collection()  # the process ends next: ~1 s less shutdown
