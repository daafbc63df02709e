"""The held-out suite's tables for docs/advisor.md, from bench/results/suite.json (registered in bench/render_docs.py).

Every function takes the render's `Results`, its `markdown_table` and its `source` line.
"""

from __future__ import annotations

FIXED_COLUMNS = ["default", "partial", "lp_ft", "probe_pooled", "probe_auto"]
BUDGETED = ["auto", "default", "partial", "lp_ft"]
# the test half on both backbones and seeds (split.json's); the dev half as far as it ran: seed 42 on both, 43 on Lite0
COMMANDS = {"test": "nice -n -5 python bench/bench_suite.py --half test",
            "dev": "nice -n -5 python bench/bench_suite.py --half dev --cases digits_8x8,mnist1k,mnist_imbalanced,"
                    "mnist_inverted,textures --seeds 42, then the same with --seeds 43 --backbones "
                    "embedded:efficientnet_lite0"}
COMMAND = COMMANDS["test"]


def _acc(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _points(value) -> str:
    return "-" if value is None else f"{value * 100:+.1f}"


def _load(cells: dict, row: dict) -> str:
    loads = [c[k] for c in cells.values() if (c["case"], c["backbone"], c["seed"]) == (row["case"], row["backbone"],
                                                                                        row["seed"])
             for k in ("load_before", "load_after")]
    return f"{min(loads):.0f}-{max(loads):.0f}" if loads else "-"


def _half_table(half: str):
    def table(r, markdown_table, source) -> str:
        suite = r.file("suite")
        rows = [row for row in suite["summary"]["rows"] if row["half"] == half]
        if not rows:
            return f"\nNo {half}-half cell ran (see *What did not run*).\n"
        body = []
        for row in rows:
            used = row["budget_used"]
            body.append([row["case"], row["backbone"].split(":")[-1].replace("efficientnet_", ""), row["seed"],
                         f"{row['budget_seconds']:g}", _load(suite["cells"], row),
                         f"{_acc(row['auto'])} ({row['auto_winner']})",
                         *[_acc(row["fixed"].get(s)) for s in FIXED_COLUMNS],
                         _points(row.get("regret_vs_best")), _points(row.get("regret_vs_default")),
                         " / ".join("-" if used.get(s) is None else f"{used[s]:.0%}" for s in BUDGETED)])
        h = suite["summary"]["halves"][half]
        text = markdown_table(["case", "backbone", "seed", "budget, s", "load", "auto (its plan)", "default fine-tune",
                               "partial", "lp_ft", "probe pooled", "probe auto", "auto regret vs best fixed, points",
                               "vs default, points", "budget used: auto / default / partial / lp_ft"], body)
        text += (f"\n{half} half: auto within 1 point of the best fixed strategy in **{h['within_1pt_of_best']}** "
                 f"cells (mean regret {_points(h['mean_regret_vs_best'])} points); more than 1 point below the default "
                 f"fine-tune in **{h['more_than_1pt_below_default']}** (mean {_points(h['mean_regret_vs_default'])}"
                 f"); budgeted runs within 90-100% of their budget: **{h['budget_used_within_90_100']}** "
                 "(wall time of each subprocess, start to exit).\n")
        return text + source(COMMANDS[half], "suite")
    return table


def table_suite_sensitivity(r, markdown_table, source) -> str:
    sens = r.file("suite")["summary"].get("sensitivity", {})
    body = []
    for name, line in sens.get("thresholds", {}).items():
        cells = []
        for factor in ("x0.5", "x2"):
            t = line[factor]["test"]
            note = [f"{t['changed']} changed"] if t["changed"] else []
            if t["changed_but_unscored"]:
                note.append(f"{t['changed_but_unscored']} unscored")
            if t["unreplayable"]:
                note.append(f"{t['unreplayable']} not replayable")
            cells.append(f"{_points(t['mean_regret_vs_best'])} vs {_points(t['as_run'])} as run ({t['scored']} scored"
                         + (f"; {', '.join(note)}" if note else "") + ")")
        body.append([f"`{name}`", f"{line['value']:g}", *cells])
    text = markdown_table(["threshold", "value", "test-half mean regret at x0.5 (the same cells as run), points",
                           "at x2"], body)
    text += "\nNot replayable from the record (they change what is measured or trained):\n\n"
    text += "".join(f"* `{name}`: {why}\n" for name, why in sens.get("not_replayable", {}).items())
    return text + source(COMMAND + " (then --summary)", "suite")


def table_suite_measures(r, markdown_table, source) -> str:
    suite = r.file("suite")
    body = []
    for row in suite["summary"]["rows"]:
        key = f"{row['case']}/{row['backbone']}/{row['seed']}/auto/{row['budget_seconds']:g}"
        rec = (suite["cells"].get(key) or {}).get("auto") or {}
        m = rec.get("measures")
        if not m:
            continue
        body.append([row["case"], row["half"], f"{m['best_probe']:.3f} ({m['best_depth'].split(' (')[0]})",
                     f"{m['pooled_probe']:.3f}", f"{m['lift']:.2f}", f"{m['bottleneck_gap']:.3f}", f"{m['gap_se']:.3f}",
                     f"{m['logme_best']:.3f}", "-" if m["bn_shift"] is None else f"{m['bn_shift']:.2f}",
                     m["read_as"].split("_")[-1], f"{rec.get('winner')}" + (" (default)" if rec.get("winner") ==
                                                                               rec.get("default") else "")])
    text = markdown_table(["case", "half", "best probe (depth)", "pooled", "lift", "gap", "SE of gap", "LogME best",
                           "BN shift", "read as", "race winner"], body)
    return text + source(COMMAND, "suite")


def table_suite_paired(r, markdown_table, source) -> str:
    """bench/results/suite_paired.json: auto and the default back to back, per repeat, and the mean difference."""
    paired = r.file("suite_paired")
    body = []
    for row in paired["summary"]["rows"]:
        steps = [f"{'-' if a is None else a}/{'-' if d is None else d}"
                 for a, d in zip(row["default_steps_in_auto"], row["default_steps_alone"])]
        body.append([row["case"], row["half"], row["backbone"].split(":")[-1].replace("efficientnet_", ""), row["seed"],
                     " ; ".join(f"{a:.3f} ({w})" for a, w in zip(row["auto"], row["auto_winner"])),
                     " ; ".join(f"{d:.3f}" for d in row["default"]),
                     " ; ".join(_points(d) for d in row["differences"]),
                     _points(row["mean_difference"]) + ("" if row["se"] is None else f" ± {row['se'] * 100:.1f}"),
                     " ; ".join(steps)])
    text = markdown_table(["case", "half", "backbone", "seed", "auto (its plan), each repeat", "default fine-tune",
                           "auto - default, points", "mean ± SE, points",
                           "default's steps: inside auto (when it won) / alone"], body)
    for half, h in paired["summary"]["halves"].items():
        if h["rows"]:
            text += (f"\n{half} half: {h['rows']} rows, {h['pairs']} pairs; mean of the rows' mean differences "
                     f"{_points(h['mean_difference'])} points; more than 1 point below the default on the mean in "
                     f"**{h['more_than_1pt_below_default_on_the_mean']}** rows, below it beyond 2 SE in "
                     f"**{h['below_default_beyond_2se']}** (from each row's first pair alone: "
                     f"{h['more_than_1pt_below_default_first_repeat_only']} more than 1 point below). Where the default "
                     f"won the race it trained {h['default_steps_in_auto_over_alone']:.2f} of the steps it trained "
                     "alone, on average.\n")
    command = paired["command"] + " --half test --repeats 2"
    dev_cases = sorted({row["case"] for row in paired["summary"]["rows"] if row["half"] == "dev"})
    if dev_cases:  # the dev rows ran as their own command, one repeat
        command += f"; the dev rows: {paired['command']} --half dev --cases {','.join(dev_cases)} --repeats 1"
    return text + source(command, "suite_paired")


SUITE_TABLES = {"suite_test": _half_table("test"), "suite_dev": _half_table("dev"),
                "suite_sensitivity": table_suite_sensitivity, "suite_measures": table_suite_measures,
                "suite_paired": table_suite_paired}
