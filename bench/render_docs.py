#!/usr/bin/env python
"""Write every measured figure of README.md and docs/ from bench/results/*.json, between markers.

Two kinds of marker, both invisible in rendered Markdown:

* a table:  `<!-- results:NAME -->` ... `<!-- /results -->`, NAME one of `TABLES` below;
* one figure in prose:  `<!-- fig FILE:dotted.key FORMAT -->0.980<!-- /fig -->`, e.g.
  `<!-- fig defaults:means.default.eval_accuracy .3f -->` (FILE is bench/results/FILE.json; FORMAT a Python format
  spec, or `x` for a ratio written `7.8x`, or `pct` for a share written `5.77 %`).

    python bench/render_docs.py           # rewrite the blocks in place
    python bench/render_docs.py --check   # exit 1 naming every stale block (tests/test_docs.py runs this check)

So a number in the docs is either produced here from a results file that a named benchmark command writes, or it
is not a measured figure. A results file that changes without a rerun of this script makes the check fail.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's hf_transfer, for the flags reference
TABLE = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)
FIGURE = re.compile(r"(<!-- fig (?P<file>[\w-]+):(?P<key>[\w.@/-]+)(?: (?P<spec>[^ ]+))? -->)(?P<value>.*?)(<!-- /fig -->)")


class MissingResult(KeyError):
    """A marker names a results file or key that does not exist."""


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


class Results:
    """bench/results/*.json, read once; `get("defaults", "means.default.eval_accuracy")`."""

    def __init__(self, folder: Path):
        self.folder, self.cache = folder, {}

    def file(self, name: str) -> dict:
        if name not in self.cache:
            path = self.folder / f"{name}.json"
            if not path.is_file():
                raise MissingResult(f"bench/results/{name}.json does not exist")
            self.cache[name] = json.loads(path.read_text())
        return self.cache[name]

    def get(self, name: str, key: str):
        value = self.file(name)
        for part in key.split("."):
            if isinstance(value, list) and part.isdigit() and int(part) < len(value):  # ranks.0.first_step_s
                value = value[int(part)]
                continue
            if not isinstance(value, dict) or part not in value:
                raise MissingResult(f"bench/results/{name}.json has no '{key}'")
            value = value[part]
        return value


def fmt(value, spec: str | None) -> str:
    if spec == "x":
        return f"{value:.1f}x" if value < 10 else f"{value:.0f}x"
    if spec == "pct":
        return f"{value:.2f} %"
    if spec:
        return format(value, spec)
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def source(command: str, file: str) -> str:
    return f"\nSource: `{command}` → `bench/results/{file}.json`.\n"


# ------------------------------------------------------------------------------------------------------ the tables
def table_defaults(r: Results) -> str:
    runs = r.file("defaults")["runs"]
    rows = [[f"`{run['flags']}`" if run["flags"] != "(none)" else "(none: the default)", run["seed"],
             f"{run['eval_accuracy']:.3f}", f"{run['eval_macro_f1']:.3f}", f"{run['train_runtime_s']:.1f} s",
             f"{run['wall_s']:.1f} s", f"{run['load_1min_before']:.1f}"] for run in runs.values()]
    means = r.get("defaults", "means")
    rows += [[f"mean of {m['runs']} runs: {name}", "", f"{m['eval_accuracy']:.3f}", f"{m['eval_macro_f1']:.3f}",
              f"{m['train_runtime_s']:.1f} s", f"{m['wall_s']:.1f} s", ""] for name, m in means.items() if m["runs"] > 1]
    loads = [run["load_1min_before"] for run in runs.values()] + [run["load_1min_after"] for run in runs.values()]
    return markdown_table(["flags on `python recipes/finetune.py`", "seed", "accuracy", "macro-F1", "train_runtime",
                           "wall (whole process)", "load before"], rows) + (
        f"\nThe CPU was shared with other jobs (1-minute load {min(loads):.0f} to {max(loads):.0f} on 2 cores): "
        "on a quiet machine the same run takes a "
        "fraction of these times (compare the loop benchmark's one-epoch runs); the accuracies are what the "
        "comparison is about.\n") + source(" then ".join(r.get("defaults", "commands")), "defaults")


def table_loop(r: Results) -> str:
    speed, accuracy = r.get("loop", "speed"), r.get("loop", "accuracy")
    lib, bare = speed["library"], speed["bare"]
    rows = [["seconds per step, median", f"{lib['seconds_per_step_median']:.3f}", f"{bare['seconds_per_step_median']:.3f}",
             f"{lib['seconds_per_step_median'] / bare['seconds_per_step_median']:.3f}"],
            ["seconds per step, mean", f"{lib['seconds_per_step_mean']:.3f}", f"{bare['seconds_per_step_mean']:.3f}",
             f"{lib['seconds_per_step_mean'] / bare['seconds_per_step_mean']:.3f}"],
            ["data per step, mean", f"{lib['breakdown_mean']['data'] * 1000:.1f} ms",
             f"{bare['breakdown_mean']['data'] * 1000:.1f} ms", ""]]
    lib_runs, bare_runs = accuracy["runs"]["library"], accuracy["runs"]["bare"]
    rows.append(["one epoch, accuracy per seed (" + " / ".join(str(x["seed"]) for x in lib_runs) + ")",
                 " / ".join(f"{x['eval_accuracy']:.3f}" for x in lib_runs),
                 " / ".join(f"{x['eval_accuracy']:.3f}" for x in bare_runs), ""])
    rows.append(["accuracy, mean of the seeds", f"{accuracy['mean_eval_accuracy']['library']:.4f}",
                 f"{accuracy['mean_eval_accuracy']['bare']:.4f}",
                 f"{accuracy['difference_points_of_means']:+.2f} points"])
    lib_wall = statistics.mean(x["wall_seconds"] for x in lib_runs)
    bare_wall = statistics.mean(x["wall_seconds"] for x in bare_runs)
    rows.append(["one epoch, wall seconds, mean of the seeds", f"{lib_wall:.1f}", f"{bare_wall:.1f}",
                 f"{lib_wall / bare_wall:.3f}"])
    return markdown_table(["", "hf_transfer fine-tune", "bare PyTorch loop", "ratio"], rows) + (
        "\nThe bare loop (written out in the benchmark) decodes images every step; hf_transfer's store decodes them "
        f"once ({lib['image_store_prepare_seconds_median']:.2f} s up front, median). "
        f"Method: {speed['method']}.\n") + source("python bench/bench_loop.py --accuracy --seeds 42 1", "loop")


def table_transfer(r: Results) -> str:
    ratio = r.get("transfer", "ratio_to_forward")
    median = r.get("transfer", "step_seconds_median")
    rows = [[name, f"{median[name]:.4f}", f"{ratio[name]:.2f}"] for name in ("forward", "backbone", "fraction_0.5", "full")]
    steps = r.get("transfer", "trainer_steps_per_second_median")
    text = markdown_table(["step (batch 32, 96 px)", "median seconds", "x a forward pass"], rows)
    text = text.replace("| backbone |", "| head only (`--freeze backbone`) |").replace(
        "| fraction_0.5 |", "| `--freeze fraction:0.5` |").replace("| full |", "| full fine-tune |").replace(
        "| forward |", "| forward pass alone |")
    text += (f"\n`TransferTrainer` against a plain `Trainer` on the same model: {steps['transfer']:.3f} vs "
             f"{steps['plain']:.3f} steps/s (medians of interleaved runs): "
             f"{r.get('transfer', 'transfer_trainer_overhead') * 100:.1f} % overhead.\n")
    return text + source("python bench/bench_transfer.py", "transfer")


def table_probe(r: Results) -> str:
    x = r.get("probe", "probe_vs_head_only_trainer")
    probe_total = x["feature_extraction_seconds_once"] + x["probe_seconds_on_cached_features"]
    rows = [["logistic-regression probe", f"{x['feature_extraction_seconds_once']:.2f} s",
             f"{x['probe_seconds_on_cached_features']:.2f} s", f"{probe_total:.2f} s", f"{x['probe_eval_accuracy']:.3f}"],
            [f"head-only Trainer, {x['trainer_head_only_epochs']} epochs", "", "",
             f"{x['trainer_head_only_seconds']:.2f} s", f"{x['trainer_eval_accuracy']:.3f}"]]
    text = markdown_table(["", "feature extraction", "fit", "end to end", "accuracy"], rows)
    text += (f"\nEnd to end the probe is {x['speedup_including_one_extraction']:.1f}x faster than the head-only "
             f"Trainer; on features already cached (a rerun, another probe) {x['speedup_probe_vs_trainer']:.0f}x. "
             f"{x['train_images']:,} training and {x['eval_images']} validation images; {x['probe']}.\n")
    t = r.get("probe", "feature_extraction_throughput")
    text += (f"\nFeature extraction: {t['extract_features_img_per_s']:.1f} images/s against "
             f"{t['bare_inference_loop_img_per_s']:.1f} for a bare inference loop ({t['ratio']:.3f}x; {t['images']:,} "
             f"images; per-chunk ratios {t['chunk_ratios_min_median_max'][0]:.2f} to "
             f"{t['chunk_ratios_min_median_max'][2]:.2f}).\n")
    return text + source("python bench/bench_probe.py", "probe")


def table_probe_rerun(r: Results) -> str:
    first, reruns = r.get("probe_rerun", "first_run"), r.get("probe_rerun", "reruns")
    mean_rerun = statistics.mean(x["wall_seconds"] for x in reruns)
    rows = [["first run (features computed)", f"{first['wall_seconds']:.1f} s", first["backbone_forward_images"],
             f"{first['eval_accuracy']:.3f}"],
            [f"rerun, median of {len(reruns)}", f"{r.get('probe_rerun', 'rerun_wall_seconds_median'):.2f} s", 0,
             f"{reruns[0]['eval_accuracy']:.3f}"],
            [f"rerun, mean of {len(reruns)}", f"{mean_rerun:.2f} s", 0, ""],
            ["imports alone (median)", f"{r.get('probe_rerun', 'imports_only_wall_seconds_median'):.2f} s", "", ""]]
    return markdown_table(["`python recipes/linear_probe.py`", "wall", "images through the backbone", "accuracy"],
                          rows) + source("python bench/bench_probe_rerun.py", "probe_rerun")


def table_probe_variants(r: Results) -> str:
    cases = r.get("probe_variants", "cases")
    layers = [row["layer"] for row in next(iter(cases.values()))["results"] if row["probe"] == "logreg"]
    header = ["logreg on", *(f"{name} ({case['train']} train)" for name, case in cases.items())]
    rows = []
    for layer in layers:
        row = [f"`{layer}`"]
        for case in cases.values():
            hit = [x for x in case["results"] if x["probe"] == "logreg" and x["layer"] == layer]
            row.append(f"{hit[0]['cv_accuracy']:.3f} ± {hit[0]['cv_accuracy_std']:.3f} / {hit[0]['val_accuracy']:.3f}"
                       if hit else "")
        rows.append(row)
    text = markdown_table(header, rows) + ("\nCells: CV accuracy ± std (3 folds on train) / validation accuracy; "
                                           "Lite0 frozen at 96 px.\n")
    for name, case in cases.items():
        if case.get("class_weighting"):
            weighted = [[f"`{x['layer']}`", x["class_weighting"], f"{x['val_macro_f1']:.3f}",
                         f"{x['minority_recall_mean']:.3f}", f"{x['majority_recall_mean']:.3f}"]
                        for x in case["class_weighting"]]
            text += (f"\nClass weighting on an imbalanced {name} ({case['class_weighting'][0]['train_images']} "
                     "training images, the minority classes cut):\n\n" + markdown_table(
                         ["logreg on", "`--class_weighting`", "validation macro-F1", "minority recall",
                          "majority recall"], weighted))
    return text + source(r.get("probe_variants", "command"), "probe_variants")


def table_lora(r: Results) -> str:
    runs = r.get("lora", "runs")
    rows = [[f"`{run['flags']}`", f"{run['eval_accuracy']:.3f}", f"{run['eval_macro_f1']:.3f}",
             f"{run['trainable_values']:,} ({run['trainable_share_pct']:.2f} %)" if "trainable_values" in run else "",
             f"{run['train_runtime_s']:.0f} s"] for run in runs.values()]
    probe = r.get("lora", "lr_probe")
    rates = [[name, f"{x['eval_accuracy']:.3f}", " / ".join(f"{v:.3f}" for v in x["last_losses"])]
             for name, x in probe.items() if isinstance(x, dict)]
    return markdown_table(["run (1 epoch, seed 42)", "accuracy", "macro-F1", "trains", "train_runtime"], rows) + (
        f"\n{r.get('lora', 'note')}; {r.get('lora', 'machine')}.\n\nThe LoRA learning rate ({probe['what']}):\n\n"
    ) + markdown_table(["rates", "accuracy", "last losses"], rates) + source(
        "python bench/bench_lora.py --runs lora partial lora_half", "lora")


def table_imbalance(r: Results) -> str:
    means = r.get("imbalance", "means")
    names = {"none": "no correction", "class_weighting": "`--class_weighting balanced`",
             "sampler": "`--sampler balanced`"}
    rows = [[names.get(k, k), f"{m['eval_accuracy']:.3f}", f"{m['eval_macro_f1']:.3f}",
             f"{m['rare_class_recall_mean']:.3f}", f"{m['lowest_recall']:.2f}"] for k, m in means.items()]
    return markdown_table(["run", "accuracy", "macro-F1", "rare classes' mean recall", "lowest class recall"], rows) + (
        f"\nSeeds: {', '.join(map(str, r.get('imbalance', 'seeds')))}; {r.get('imbalance', 'epochs')} epoch.\n") + source(
        r.get("imbalance", "command"), "imbalance")


def table_cv(r: Results) -> str:
    x = r.file("cv_default")
    rows = [["accuracy", x["cv_accuracy"], " / ".join(f"{v:.3f}" for v in x["per_fold_accuracy"])],
            ["macro-F1", x["cv_macro_f1"], " / ".join(f"{v:.3f}" for v in x["per_fold_macro_f1"])],
            ["seconds", f"{x['wall_seconds']:.1f} wall", " / ".join(f"{v:.0f}" for v in x["fold_seconds"])]]
    return markdown_table(["", "mean ± std", "per fold"], rows) + (
        f"\nLoad average (1 min) {x['load_average_before'][0]:.1f} before, {x['load_average_after'][0]:.1f} after.\n"
    ) + source("python bench/bench_cv.py", "cv_default")


def table_advisor(r: Results) -> str:
    cells = r.get("advisor", "cells")
    rows = []
    for name, cell in cells.items():
        runs = cell["runs"]
        fixed = {k: v["eval_accuracy"] for k, v in runs.items() if k not in ("auto", "plain_trainer")}
        best = max(fixed, key=fixed.get)
        rows.append([name, f"{runs['auto']['eval_accuracy']:.3f}", f"{fixed[best]:.3f} ({best})",
                     f"{(runs['auto']['eval_accuracy'] - fixed[best]) * 100:+.1f}",
                     f"{runs['plain_trainer']['eval_accuracy']:.3f}", f"{runs['auto']['seconds']:.0f} s"])
    summary = r.get("advisor", "summary")
    within = sum(1 for v in summary["auto_minus_best_fixed_points"].values() if v >= -1.0)
    text = markdown_table(["case / backbone", "`--strategy auto`", "best fixed strategy (the strong baseline)",
                           "auto - best, points", "plain Trainer, 5e-5 for all", "auto wall"], rows)
    text += (f"\n`--strategy auto` is within 1 point of the best fixed strategy in {within} of {len(cells)} cells. "
             f"Against the weak baseline (a plain `Trainer` at one rate of 5e-5) it is "
             f"{summary['auto_minus_plain_trainer_mean_points']:.1f} points ahead on average; that baseline is what a "
             "first try with Trainer's defaults gives, not a tuned competitor. Fixed strategies: probes (pooled, "
             "earlier depth, concatenated), `partial`, `lp_ft`, `full`, each under the case's time budget.\n")
    return text + source("python bench/bench_advisor.py", "advisor")


def table_datacheck(r: Results) -> str:
    x = r.file("datacheck")
    rows = [[name.replace("_", " "), f"{x[name]['images']:,}", f"{x[name]['median_images_per_second']:,}",
             f"{x[name]['best_images_per_second']:,}"] for name in ("image_folder", "in_memory_arrow", "photo_jpegs")]
    return markdown_table(["data", "images", "images/s, median", "images/s, best"], rows) + source(
        "python bench/bench_datacheck.py", "datacheck")


def table_probe_speed(r: Results) -> str:
    data = r.get("probe_speed", "recipes")
    rows = []
    for case, sides in data.items():
        for label, side in (("main at " + r.get("probe_speed", "start_commit"), sides["today"]), ("this code", sides["new"])):
            first, rerun = side["first"], side["cached_rerun"]
            imports = f"{side['import_seconds']:.1f} s" if "import_seconds" in side else ""
            rows.append([case, label, f"{first['wall_seconds']:.1f} s (load {first['load_1min']:.1f})",
                         f"{first['feature_seconds']:.1f} s / {first['probe_seconds']:.1f} s",
                         f"{first['validation_accuracy']:.3f} ({first['exported']})",
                         f"{rerun['wall_seconds']:.1f} s ({side['rerun_fraction']:.2f} of the first)", imports])
        rows.append([case, "this / main", f"{sides['new_over_today_wall']:.2f}x", "", "", "", ""])
    text = markdown_table(["case", "code", "first run, wall", "extraction / probe fits", "validation accuracy",
                           "cached rerun", "imports alone"], rows)
    x = r.get("probe_speed", "extraction")
    by_threads = x.get("bare_loop_img_per_s_by_threads")
    threads = (" (the faster of its runs at " + " and ".join(f"{k} thread{'s' if k != '1' else ''}: {v:.1f}"
                                                            for k, v in by_threads.items()) + ")") if by_threads else ""
    text += (f"\nExtraction of {x['images']:,} images at every requested depth: {x['compute_features_img_per_s']:.1f} "
             f"images/s against {x['bare_loop_img_per_s']:.1f} for a bare batched loop that "
             f"decodes once and returns the pooled feature only{threads} ({x['ratio']:.2f}x; target "
             f"{x['target_ratio']:.1f}x). Imports alone: a process that only imports what the recipe imports.\n")
    t = r.file("probe_speed").get("thread_choice")
    if t:
        text += (f"\nThread count under libgomp's default wait policy ({t['images']:,} images, a fresh process, load "
                 f"{t['fixed']['load_1min_at_start']:.1f}): torch's {t['torch_threads']} threads for every batch "
                 f"{t['fixed']['ms_per_image']:.1f} ms per image, chosen per batch "
                 f"{t['chosen_per_batch']['ms_per_image']:.1f} ms ({t['fixed_over_chosen']:.1f}x).\n")
    return text + source("python bench/bench_probe_speed.py", "probe_speed")


def table_probe_mlp_cost(r: Results) -> str:
    rows = [[layer, f"{v['logreg']['fit_seconds']:.1f} s", f"{v['mlp']['fit_seconds']:.1f} s",
             f"{v['mlp_over_logreg']:.1f}x", f"{v['logreg']['cv_accuracy']:.4f}", f"{v['mlp']['cv_accuracy']:.4f}"]
            for layer, v in r.get("probe_mlp_cost", "layers").items()]
    total = r.get("probe_mlp_cost", "all_layers_fit_seconds")
    rows.append(["all layers", f"{total['logreg']:.1f} s", f"{total['mlp']:.1f} s",
                 f"{r.get('probe_mlp_cost', 'all_layers_mlp_over_logreg'):.1f}x", "", ""])
    text = markdown_table(["layer", "logreg fit", "MLP fit", "MLP / logreg", "logreg CV accuracy", "MLP CV accuracy"],
                          rows)
    text += f"\n{r.get('probe_mlp_cost', 'train_images'):,} training images of {r.get('probe_mlp_cost', 'dataset')}.\n"
    return text + source("python bench/bench_probe_mlp_cost.py", "probe_mlp_cost")


TABLES = {"probe_speed": table_probe_speed, "probe_mlp_cost": table_probe_mlp_cost, "defaults": table_defaults, "loop": table_loop, "transfer": table_transfer, "probe": table_probe,
          "probe_rerun": table_probe_rerun, "probe_variants": table_probe_variants, "lora": table_lora,
          "imbalance": table_imbalance, "cv": table_cv, "advisor": table_advisor, "datacheck": table_datacheck}
sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_scale import TABLES as SCALE_TABLES  # noqa: E402 (docs/scale.md's tables)
from suite.tables import SUITE_TABLES  # noqa: E402  (the advisor's held-out suite: bench/suite/tables.py)

TABLES.update(SCALE_TABLES)
TABLES.update({name: (lambda r, f=f: f(r, markdown_table, source)) for name, f in SUITE_TABLES.items()})


# ------------------------------------------------------------------------------------------- the flags reference
FLAGS_PAGE = Path("docs") / "reference" / "flags.md"
TRANSFORMERS_TRAINING_ARGUMENTS = "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments"


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _flag_rows(parser, actions, training: bool) -> list[list[str]]:
    from transformers import TrainingArguments

    plain = TrainingArguments.__dataclass_fields__
    rows = []
    for action in actions:
        names = ", ".join(f"`{option}`" for option in action.option_strings if "-" not in option[2:])
        default = action.default
        if training and action.dest in plain:
            base = plain[action.dest].default
            if default == base:
                default_text = f"{_cell(default)} (as Trainer)" if default not in (None, "") else ""
            else:
                default_text = f"**{_cell(default)}** (Trainer: {_cell(base)})"
        else:
            default_text = "" if default in (None, "", [], False) else _cell(default)
        rows.append([names, default_text, _cell(action.help or "")])
    return rows


def flags_reference() -> str:
    """docs/reference/flags.md: every flag of every job, from the dataclasses and the parser the jobs use."""
    from hf_transfer.argument_parser import COMMON_TRAINING_FLAGS, RecipeArgumentParser
    from hf_transfer.arguments import finetune_argument_types
    from hf_transfer.jobs.advise import advise_argument_types
    from hf_transfer.jobs.cross_validate import CVArguments
    from hf_transfer.jobs.probe import probe_argument_types

    jobs = {"hf-transfer finetune": finetune_argument_types(), "hf-transfer probe": probe_argument_types(),
            "hf-transfer advise": advise_argument_types(), "hf-transfer cv": (CVArguments,)}
    out = ["# Flags reference", "",
           "<!-- generated by python bench/render_docs.py from the dataclasses; tests/test_docs.py checks it -->", "",
           "Every job takes a YAML or JSON config file first (keys are the flag names), then flags that override it. "
           "`--help` lists a job's common flags, `--help_all` every one. `recipes/<job>.py` in a checkout takes the "
           "same flags as `hf-transfer <job>`. A flag a job does not read is refused in one line, not ignored.", ""]
    for job, types in jobs.items():
        parser = RecipeArgumentParser(types, prog=job)
        out += [f"## `{job}`", ""]
        if job == "hf-transfer cv":
            out += ["Its own flags, below; every other flag goes to each fold's run: those of `hf-transfer finetune` "
                    "(default) or, with `--recipe linear_probe`, of `hf-transfer probe`.", ""]
        for dtype in types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            actions = [a for a in parser._actions if a.dest in names]
            training = dtype is parser.training_type
            if training:
                common = [a for a in actions if a.dest in COMMON_TRAINING_FLAGS]
                changed = [a for a in actions if a.dest not in COMMON_TRAINING_FLAGS
                           and dtype.__dataclass_fields__[a.dest].default
                           != getattr(dtype.__mro__[1], "__dataclass_fields__", {}).get(a.dest, dtype.__dataclass_fields__[a.dest]).default]
                out += [f"### training (`{dtype.__name__}`)", "",
                        "The common `TrainingArguments` flags and those whose default hf_transfer changes (in bold). "
                        f"Every other [TrainingArguments]({TRANSFORMERS_TRAINING_ARGUMENTS}) field is a flag too, "
                        "with Trainer's default (`--help_all` lists them).", ""]
                out.append(markdown_table(["flag", "default", "meaning"], _flag_rows(parser, common + changed, True)))
            else:
                out += [f"### {dtype.__name__.removesuffix('Arguments').lower()} (`{dtype.__name__}`)", ""]
                out.append(markdown_table(["flag", "default", "meaning"], _flag_rows(parser, actions, False)))
            if dtype is types[-1] and parser.training_type is None and "--log_level" in parser._option_string_actions:
                own = [parser._option_string_actions[f"--{name}"] for name in ("log_level", "disable_tqdm")]
                out += ["### logging", ""]
                out.append(markdown_table(["flag", "default", "meaning"], _flag_rows(parser, own, False)))
            unread = getattr(dtype, "UNREAD_FLAGS", {})
            if unread:
                out.append("Not read by this job (refused): " + "; ".join(
                    f"`--{name}` ({why})" for name, why in unread.items()) + ".\n")
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------------- rendering
def render(text: str, results: Results) -> str:
    def table(match):
        name = match["name"]
        if name not in TABLES:
            raise MissingResult(f"no table named '{name}' in bench/render_docs.py (known: {', '.join(TABLES)})")
        return match.group(1) + TABLES[name](results) + match.group(4)

    def figure(match):
        return match.group(1) + fmt(results.get(match["file"], match["key"]), match["spec"]) + match.group(6)

    return FIGURE.sub(figure, TABLE.sub(table, text))


def stale(root: Path = ROOT) -> list[str]:
    """The documents whose rendered blocks differ from what the results files give (or that name a missing one)."""
    results, problems = Results(root / "bench" / "results"), []
    flags = root / FLAGS_PAGE
    if not flags.is_file() or flags.read_text() != flags_reference():
        problems.append(f"{FLAGS_PAGE}: not the flags the dataclasses define; run python bench/render_docs.py")
    for path in documents(root):
        text = path.read_text()
        try:
            if render(text, results) != text:
                problems.append(f"{path.relative_to(root)}: figures differ from bench/results; "
                                "run python bench/render_docs.py")
        except MissingResult as err:
            problems.append(f"{path.relative_to(root)}: {err.args[0]}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 naming stale documents")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    if args.check:
        problems = stale(args.root)
        print("\n".join(problems) or "every figure is current")
        return 1 if problems else 0
    results = Results(args.root / "bench" / "results")
    flags = args.root / FLAGS_PAGE
    if not flags.is_file() or flags.read_text() != flags_reference():
        flags.parent.mkdir(parents=True, exist_ok=True)
        flags.write_text(flags_reference())
        print(f"rewrote {FLAGS_PAGE}")
    missing = []
    for path in documents(args.root):
        text = path.read_text()
        try:
            new = render(text, results)
        except MissingResult as err:
            missing.append(f"{path.relative_to(args.root)}: {err.args[0]}")
            continue
        if new != text:
            path.write_text(new)
            print(f"rewrote {path.relative_to(args.root)}")
    print("\n".join(missing), file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
