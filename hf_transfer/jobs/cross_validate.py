"""The cross-validation job behind `recipes/cross_validate.py` and `hf-transfer cv`: any fine-tune or probe run
over stratified folds of the train split (`hf_transfer.cv`), each fold a normal run of that job.

    run_cross_validation(["--folds", "3", "--search", "learning_rate=3e-3,1e-2", "--num_train_epochs", "1"])
    cross_validate_recipe(["--dataset_name", "embedded:digits"], recipe="linear_probe", folds=5)  # -> CVResult

The flags are the recipe's own (``--recipe finetune``, the default, or ``linear_probe``) plus `CVArguments`;
``--seed`` seeds both the folds and each fold's run, ``--output_dir`` is the cross-validation folder.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TransferError
from ..runtime import configure_cpu_threads, process_count, say
from ..saving import COMPLETION_MARKER, prepare_output_dir, resolve_output_dir, staged_output, write_json

RECIPES = ("finetune", "linear_probe")
# Flags that belong to the cross-validation itself, or that a fold run must not do.
NOT_SEARCHABLE = {"output_dir", "overwrite_output_dir", "seed", "recipe", "folds", "search", "choose_by",
                  "keep_fold_models", "refit", "resume_from_checkpoint", "push_to_hub", "dataset_name", "train_dir",
                  "validation_dir", "test_dir", "max_train_samples", "max_eval_samples", "validation_split"}
REFUSED = {"resume_from_checkpoint": "cross-validation always trains afresh", "push_to_hub": "push the refit folder "
           "afterwards with push_scripts/"}


@dataclass
class CVArguments:
    recipe: str = field(default="finetune", metadata={"help": "The run done on every fold: finetune or linear_probe."})
    folds: int = field(default=5, metadata={"help": "Stratified folds of the train split."})
    search: list[str] = field(
        default_factory=list,
        metadata={"help": "Settings to compare, name=v1,v2 with name any flag of the recipe (learning_rate=3e-3,1e-2; "
                          "freeze=depth:2,depth:4; strategy=full,linear_probe); several after one --search: every combination."},
    )
    choose_by: str = field(default="macro_f1", metadata={"help": "Mean CV score that picks the setting: macro_f1 or accuracy."})
    keep_fold_models: bool = field(default=False, metadata={"help": "Keep each fold's output folder (model included) "
                                                                    "under folds/; by default only the scores stay."})
    refit: bool = field(default=False, metadata={"help": "Afterwards train the chosen setting on the whole train split "
                                                         "into refit/, scored on the validation split (the holdout)."})


def recipe_in(argv: list[str]) -> str:
    """--recipe from the command line (it decides which flags parse, so it is read first)."""
    for i, arg in enumerate(argv):
        if arg == "--recipe" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--recipe="):
            return arg.split("=", 1)[1]
    return "finetune"


def cv_argument_types(recipe: str) -> tuple:
    from ..arguments import finetune_argument_types
    from .probe import probe_argument_types

    if recipe not in RECIPES:
        raise TransferError(f"--recipe {recipe!r} is unknown; use {' or '.join(RECIPES)}")
    return (*(finetune_argument_types() if recipe == "finetune" else probe_argument_types()), CVArguments)


def _given_flags(argv: list[str]) -> set[str]:
    """Flag names given on the command line or in a leading config file."""
    from ..argument_parser import is_config_file, load_config

    names = {arg[2:].split("=")[0] for arg in argv if arg.startswith("--")}
    if argv and is_config_file(argv[0]):
        names |= set(load_config(argv[0]))
    return names


class _FoldRunner:
    """Parses the recipe's flags for one setting and runs its job on a fold's data."""

    def __init__(self, argv: list[str], recipe: str, prog: str, folder: Path, keep: bool):
        self.argv, self.recipe, self.prog, self.folder, self.keep = argv, recipe, prog, folder, keep
        # One evaluation per fold is enough: the job scores the fold after training anyway.
        self.extra = ["--eval_strategy", "no"] if recipe == "finetune" and not _given_flags(argv) & {"eval_strategy", "eval_steps"} else []

    def parse(self, setting: dict[str, str], output_dir: str | None = None):
        from ..arguments import parse_args

        flags = [flag for name, value in setting.items() for flag in (f"--{name}", value)]
        out = ["--output_dir", str(output_dir), "--overwrite_output_dir"] if output_dir else []
        parsed = parse_args(cv_argument_types(self.recipe), [*self.argv, *self.extra, *flags, *out], prog=self.prog)
        return parsed[:-1]

    def check(self, setting: dict[str, str]) -> None:
        """Bad values of a searched flag fail before any data is loaded."""
        parsed = self.parse(setting)
        if self.recipe == "finetune":
            model_args, _, training_args, transfer_args = parsed
            transfer_args.to_config(training_args).validate()

    def run(self, data, setting: dict[str, str], output_dir: Path) -> dict:
        from ..cv import PreloadedDataArguments

        model_args, data_args, job_args, *rest = self.parse(setting, output_dir)
        data_args = PreloadedDataArguments.of(data_args, data)
        if self.recipe == "finetune":
            from .finetune import run_finetune

            return run_finetune(model_args, data_args, job_args, *rest)
        from .probe import run_linear_probe

        return run_linear_probe(model_args, data_args, job_args)

    def __call__(self, data, setting: dict[str, str], fold: int) -> dict:
        folder = self.folder / "folds" / _slug(setting) / f"fold-{fold + 1}"
        try:
            return self.run(data, setting, folder)
        finally:
            if not self.keep:
                shutil.rmtree(folder, ignore_errors=True)  # the scores are kept; the model is not wanted


def _slug(setting: dict[str, str]) -> str:
    text = "_".join(f"{k}-{v}" for k, v in setting.items()) or "as_given"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def run_cross_validation(argv: list[str] | None = None, prog: str = "cross_validate"):
    """Parse the flags, cross-validate, write the folder; -> `CVResult` (``hf_transfer.cv``)."""
    import sys

    from ..arguments import parse_args
    from ..cv import cross_validate, parse_search

    start = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = recipe_in(argv)
    if sum(arg == "--search" or arg.startswith("--search=") for arg in argv) > 1:
        raise TransferError("--search is given more than once (only the last would count); list every searched flag "
                            "after one --search, e.g. --search learning_rate=3e-3,1e-2 freeze=depth:2,depth:4")
    *recipe_args, cv_args = parse_args(cv_argument_types(recipe), argv, prog=prog)
    if cv_args.recipe != recipe:
        raise TransferError(f"give --recipe {cv_args.recipe} on the command line, not in the config file")
    if process_count() > 1:
        raise TransferError("cross-validation runs its folds one after another in one process; start it with python, "
                            "not with several accelerate processes")
    model_args, data_args, job_args = recipe_args[:3]
    for name, why in REFUSED.items():
        if getattr(job_args, name, None):
            raise TransferError(f"--{name} does not apply to cross-validation ({why}); drop it")
    if cv_args.choose_by not in ("macro_f1", "accuracy"):
        raise TransferError(f"--choose_by {cv_args.choose_by!r} is unknown; use macro_f1 or accuracy")
    settings = parse_search(cv_args.search)
    searched = sorted({name for setting in settings for name in setting})
    bad = [name for name in searched if name in NOT_SEARCHABLE]
    if bad:
        raise TransferError(f"--search cannot vary {', '.join(bad)}: it is fixed for the whole cross-validation; "
                            "search training flags such as learning_rate, freeze or strategy")
    if cv_args.folds < 2:
        raise TransferError(f"--folds {cv_args.folds}: cross-validation needs at least 2 folds")
    output_dir = Path(resolve_output_dir(job_args, "cross_validate", model_args, data_args))
    runner = _FoldRunner(argv, recipe, prog, output_dir, cv_args.keep_fold_models)
    for setting in settings:
        runner.check(setting)
    prepare_output_dir(output_dir, overwrite=job_args.overwrite_output_dir, resumable=False)
    for leftover in ("folds", "refit"):  # an earlier run's fold or refit folders never mix with this run's
        shutil.rmtree(output_dir / leftover, ignore_errors=True)
    configure_cpu_threads()

    seed = job_args.seed
    data = data_args.load(seed, model_args)  # loaded and checked once; every fold is a subset of its train split
    for note in data.notes:
        say(note)
    say(f"cross-validation of {recipe} on {data.source}: {cv_args.folds} stratified folds of {len(data.splits['train'])} "
        f"train images (seed {seed}); {len(settings)} setting(s); the validation split "
        f"({len(data.splits['validation'])} images) is held out")
    result = cross_validate(data, runner, folds=cv_args.folds, seed=seed, settings=settings,
                            choose_by=cv_args.choose_by, recipe=recipe)
    if not cv_args.keep_fold_models:
        shutil.rmtree(output_dir / "folds", ignore_errors=True)
    if cv_args.refit:
        say(f"refit of {result.chosen.name} on the whole train split, scored on the validation split")
        whole = dataclasses.replace(data, notes=[])
        refit = runner.run(whole, result.chosen.setting, output_dir / "refit")
        result.refit = {k: v for k, v in refit.items() if k.startswith("eval_") and isinstance(v, (int, float))}
    result.seconds = time.perf_counter() - start
    say("cross-validation results:\n" + result.table())
    with staged_output(output_dir) as staging:
        result.write(staging)
        data.write_bad_images(staging)
        write_json(staging / COMPLETION_MARKER, result.summary())  # last: the folder is complete
    chosen = result.chosen
    say(f"{chosen.name}: accuracy {chosen.mean['accuracy']:.4f} ± {chosen.std['accuracy']:.4f}, macro-F1 "
        f"{chosen.mean['macro_f1']:.4f} ± {chosen.std['macro_f1']:.4f} over {cv_args.folds} folds "
        f"({'chosen of ' + str(len(settings)) + ' settings, ' if len(settings) > 1 else ''}{result.seconds:.1f}s) -> {output_dir}")
    return result


def cross_validate_recipe(recipe_flags: list[str], *, recipe: str = "finetune", folds: int = 5, seed: int = 42,
                          search: list[str] | tuple[str, ...] = (), choose_by: str = "macro_f1",
                          output_dir: str | None = None, overwrite: bool = True, keep_fold_models: bool = False,
                          refit: bool = False):
    """The library form of `recipes/cross_validate.py`: ``recipe_flags`` are the recipe's own flags; -> `CVResult`
    (``.mean`` / ``.std`` / ``.per_fold`` of the chosen setting, ``.chosen.setting``, ``.choose(metric)``)."""
    argv = [*recipe_flags, "--recipe", recipe, "--folds", str(folds), "--seed", str(seed), "--choose_by", choose_by]
    if search:
        argv += ["--search", *search]
    if output_dir:
        argv += ["--output_dir", str(output_dir)]
    if overwrite:
        argv.append("--overwrite_output_dir")
    if keep_fold_models:
        argv.append("--keep_fold_models")
    if refit:
        argv.append("--refit")
    return run_cross_validation(argv)
