"""The `hf-transfer` command: a thin layer over the library (parse, then call), like `accelerate`'s CLI.

    hf-transfer finetune [flags of recipes/finetune.py]
    hf-transfer probe    [flags of recipes/linear_probe.py]
    hf-transfer cv       [flags of recipes/cross_validate.py]
    hf-transfer advise   [flags of recipes/advise.py]
    hf-transfer list                       # embedded backbones and datasets
"""

from __future__ import annotations

import sys

from .errors import exit_on_user_error


def _finetune(argv: list[str]) -> None:
    from .arguments import finetune_argument_types, parse_args
    from .jobs.finetune import run_finetune

    prog = "hf-transfer finetune"
    with exit_on_user_error(prog):
        run_finetune(*parse_args(finetune_argument_types(), argv, prog=prog))


def _probe(argv: list[str]) -> None:
    from .arguments import parse_args
    from .jobs.probe import probe_argument_types, run_linear_probe

    prog = "hf-transfer probe"
    with exit_on_user_error(prog):
        run_linear_probe(*parse_args(probe_argument_types(), argv, prog=prog))


def _cv(argv: list[str]) -> None:
    from .jobs.cross_validate import run_cross_validation

    prog = "hf-transfer cv"
    with exit_on_user_error(prog):
        run_cross_validation(argv, prog=prog)


def _advise(argv: list[str]) -> None:
    from .arguments import parse_args
    from .jobs.advise import advise_argument_types, run_advise

    prog = "hf-transfer advise"
    with exit_on_user_error(prog):
        run_advise(*parse_args(advise_argument_types(), argv, prog=prog))


def _list(argv: list[str]) -> None:
    from .backbones import EMBEDDED_BACKBONES, EMBEDDED_PREFIX
    from .data import EMBEDDED_DATASETS

    print("embedded backbones (no network needed):")
    for name, spec in EMBEDDED_BACKBONES.items():
        print(f"  {EMBEDDED_PREFIX}{name:<22} {spec.description}")
    print("embedded datasets:")
    for name, spec in EMBEDDED_DATASETS.items():
        print(f"  {EMBEDDED_PREFIX}{name:<22} {spec.description}")


COMMANDS = {
    "finetune": (_finetune, "fine-tune a backbone (the flags of recipes/finetune.py)"),
    "probe": (_probe, "linear/SVM probes on cached frozen features, per depth (the flags of recipes/linear_probe.py)"),
    "cv": (_cv, "cross-validate a fine-tune or probe over stratified folds of train; --search compares settings"),
    "advise": (_advise, "measure data and backbones, choose the transfer strategy, write a plan (recipes/advise.py)"),
    "list": (_list, "list the embedded backbones and datasets"),
}


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: hf-transfer <command> [flags]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nhf-transfer: error: unknown command {argv[0]!r}; pick one of the commands above", file=sys.stderr)
            raise SystemExit(2)
        return
    if from_command_line:  # --time_budget counts the whole process, its start and imports included
        from .budget import charge_from_process_start

        charge_from_process_start()
    COMMANDS[argv[0]][0](argv[1:])
    if from_command_line:  # the process ends next: ~1 s less shutdown (in-process callers keep a normal heap)
        from .runtime import skip_exit_garbage_collection

        skip_exit_garbage_collection()


if __name__ == "__main__":
    main()
