"""What the advisor shows: the size and similarity tables, the markdown report and the per-depth plot."""

from __future__ import annotations

import textwrap
from pathlib import Path

from ..strategies import get_strategy
from .measure import SimilarityStats, SizeStats
from .rank import ranking_table
from .rules import SCENARIOS, Decision


def size_table(size: SizeStats) -> str:
    rows = [
        ("training images", f"{size.n_train}"),
        ("validation images", f"{size.n_validation}"),
        ("classes", f"{size.n_classes}"),
        ("images per class", f"min {size.min_per_class}, median {size.median_per_class:g}, max {size.max_per_class}"),
        ("class balance", f"largest / smallest {size.imbalance_ratio:.2f}; majority class {size.majority_share:.1%}"),
    ]
    return "\n".join(f"{name:<18} {value}" for name, value in rows)


def _frozen_depths(decision: Decision, body_depths: int | None = None) -> int:
    """How many body depth groups a partial plan freezes (0 for other plans)."""
    if "freeze" not in get_strategy(decision.strategy).decision_flags:  # only a partial plan has a freeze rule
        return 0
    kind, _, value = decision.freeze.partition(":")
    if kind == "depth":
        return int(value)
    if kind == "fraction" and body_depths:
        return int(float(value) * body_depths + 1e-9)
    return 0


def similarity_table(sim: SimilarityStats, decision: Decision | None = None) -> str:
    rows = [f"{'depth':<30} {'dim':>5} {'probe cv':>9} {'LogME':>8} {'BN shift':>9}"]
    frozen = _frozen_depths(decision, sim.body_depths) if decision else 0
    for d in sim.depths:
        shift = "-" if d.bn_shift is None else f"{d.bn_shift:.3f}"
        mark = ""
        if decision is not None:
            if decision.job == "probe" and d.spec in (decision.layers or "").split("+"):
                mark = "  <- probed"
            elif frozen and d.depth is not None and d.depth < frozen:
                mark = "  frozen"
        best = " *" if d is sim.best else "  "
        rows.append(f"{d.name[:30]:<30} {d.dim:>5} {d.probe_cv:>8.4f}{best} {d.logme:>7.3f} {shift:>9}{mark}")
    rows.append(f"* best probe; bottleneck gap {sim.bottleneck_gap:+.4f}; LogME peaks at {sim.best_by_logme.name}; "
                f"{sim.images} images, {sim.cv_folds}-fold CV")
    if sim.concat:
        rows.append(f"concatenated {sim.concat['layers']} ({sim.concat['dim']} features): probe cv {sim.concat['probe_cv']:.4f}")
    return "\n".join(rows)


def scenario_name(decision: Decision) -> str:
    """'small, similar'; a medium-sized set is named as such and sits in the 'large' row of the 2x2."""
    similarity = "similar" if decision.similar else "dissimilar"
    if decision.size_band == "medium":
        return f"medium, {similarity} (the large-data row of the 2x2)"
    return f"{decision.size_band}, {similarity}"


MEDIUM = "medium-sized data: fine-tune with the first half of the body frozen (less when the probe curve peaks early)"


def scenario_text(decision: Decision) -> str:
    base = MEDIUM if decision.size_band == "medium" else SCENARIOS[decision.scenario]
    if decision.size_band != "small" and decision.job == "probe":
        return f"{base}; but the time budget leaves too few steps for that: a linear probe instead"
    return base


def decision_text(decision: Decision) -> str:
    lines = [f"scenario: {scenario_name(decision)}: {scenario_text(decision)}"]
    lines += [f"  - {reason}" for reason in decision.reasons]
    return "\n".join(lines)


def markdown(advice) -> str:
    """advice.md for an `Advice` (advice.py)."""
    m, d = advice.chosen, advice.decision
    out = [f"# Transfer advice: {advice.data_source}", ""]
    out += [f"Backbone{'s' if len(advice.ranked) > 1 else ''} measured: "
            + ", ".join(f"`{x.backbone}`" for x in advice.ranked) + f"; chosen: `{m.backbone}` at {m.cost.image_size} px.", ""]
    out += ["## Size", "", "```", size_table(m.size), "```", ""]
    out += ["## Similarity to the pretraining data, per depth", "",
            f"Probe: logistic regression, {m.similarity.cv_folds}-fold CV on a stratified {m.similarity.images}-image "
            "subsample of train. LogME: You et al. (ICML 2021), higher is better. BN shift: KL divergence between the "
            "data's statistics at each BatchNorm input and the stored running statistics (0 = identical).", "",
            "```", similarity_table(m.similarity, d), "```", "", "![probe accuracy and similarity per depth](advice.png)", ""]
    if len(advice.ranked) > 1:
        out += ["## Backbone ranking (before any fine-tuning)", "", "```", ranking_table(advice.ranked), "```", ""]
    out += ["## Scenario", "", f"**{scenario_name(d)}**: {scenario_text(d)}.", ""]
    out += [f"- {reason}" for reason in d.reasons] + [""]
    out += ["## Plan", "", f"Run it: `{advice.recipe} {advice.plan_path_hint}`", "", "```yaml", advice.plan_yaml_body(), "```", ""]
    if d.estimated_seconds is not None:
        out += [f"Estimated run time on this machine: {d.estimated_seconds:.0f} s"
                + (f" (time budget {advice.time_budget:.0f} s)" if advice.time_budget else "") + ".", ""]
    if advice.race:
        out += ["## The race", ""] + race_lines(advice.race) + [""]
    if advice.budget:
        out += ["## Time budget: planned against used", ""] + [f"- {k}: {v}" for k, v in advice.budget.items()] + [""]
    out += [f"Measured in {advice.seconds:.1f} s.", ""]
    return "\n".join(out)


def race_lines(race: dict) -> list[str]:
    """The race as markdown: every plan's held-out accuracy (± binomial SE) per rung, when it was dropped, why the
    winner won, and the soup."""
    names = [c["name"] for c in race["candidates"]]
    rungs = race["rungs"]
    out = [f"{len(names)} candidate plans trained on the training split less {race['holdout_images']} held-out images "
           "(never the validation or test split), scored on those, the better half kept at each rung (paired "
           f"differences; {race['seconds']:.0f} s in all).", "",
           "| plan | why | " + " | ".join(f"rung {r['rung']} (steps: acc ± SE)" for r in rungs) + " |",
           "|---|---|" + "---|" * len(rungs)]
    for c in race["candidates"]:
        cells = []
        for r in rungs:
            row = r["plans"].get(c["name"])
            cells.append("" if row is None else f"{row['steps']}: {row['accuracy']:.3f} ± {row['se']:.3f}"
                         + (" **dropped**" if row["dropped"] else ""))
        out.append(f"| {c['name']}{' (default)' if c['is_default'] else ''} | {c['why']} | " + " | ".join(cells) + " |")
    if race.get("verdict"):
        out += ["", f"**Winner: {race['verdict']['winner']}.** {race['verdict']['reason']}."]
    soup = race.get("soup")
    if soup:
        out += ["", f"Model soup (greedy, Wortsman et al. 2022) of {', '.join(soup['ingredients'])}: {soup['accuracy']:.3f} "
                f"on the held-out images against {soup['winner_accuracy']:.3f} for the best finalist: "
                + ("kept, the real run starts from it." if soup["kept"] else "not kept.")]
    return out


def plot(advice, path: str | Path) -> Path:
    """Top: probe accuracy per depth (left axis) and LogME (right axis); bottom: BN shift per depth. The chosen point
    is marked: the probed depth(s) with a star, or the frozen depths shaded for a partial fine-tune."""
    from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global state

    m, d = advice.chosen, advice.decision
    sim = m.similarity
    xs = list(range(len(sim.depths)))
    labels = [x.name.replace(" (", "\n(") for x in sim.depths]
    fig = Figure(figsize=(max(7.0, 0.42 * len(xs) + 3), 9.0 if advice.race else 6.0))
    if advice.race:  # a third panel: the race, held-out accuracy per rung
        top, bottom, race_ax = fig.subplots(3, 1, gridspec_kw={"height_ratios": [2, 1, 1.6]})
        bottom.sharex(top)
        top.tick_params(labelbottom=False)
        _plot_race(race_ax, advice.race)
    else:
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    top.plot(xs, [x.probe_cv for x in sim.depths], marker="o", color="tab:blue", label="probe accuracy (CV)")
    top.set_ylabel("probe accuracy (CV)", color="tab:blue")
    twin = top.twinx()
    twin.plot(xs, [x.logme for x in sim.depths], marker="s", color="tab:orange", alpha=0.8, label="LogME")
    twin.set_ylabel("LogME", color="tab:orange")
    if d.job == "probe":
        chosen = [i for i, x in enumerate(sim.depths) if x.spec in (d.layers or "").split("+")]
        top.plot(chosen, [sim.depths[i].probe_cv for i in chosen], linestyle="none", marker="*", markersize=18,
                 color="tab:red", label=f"chosen: probe on {d.layers}")
    else:
        frozen = _frozen_depths(d, sim.body_depths)
        if frozen:
            for ax in (top, bottom):
                ax.axvspan(-0.5, frozen - 0.5, color="grey", alpha=0.15)
        top.plot([], [], color="grey", alpha=0.3, linewidth=8,
                 label=f"chosen: {d.strategy}" + (f", {d.freeze} frozen" if frozen else ", every depth trains"))
    lines, names = top.get_legend_handles_labels()
    more_lines, more_names = twin.get_legend_handles_labels()
    top.legend(lines + more_lines, names + more_names, fontsize=8, loc="lower right")
    top.grid(alpha=0.3)
    shifts = [x.bn_shift if x.bn_shift is not None else 0.0 for x in sim.depths]
    bottom.bar(xs, shifts, color="tab:green", alpha=0.7)
    bottom.set_ylabel("BN shift (KL)")
    bottom.set_xticks(xs)
    bottom.set_xticklabels(labels, rotation=60, fontsize=7, ha="right")
    bottom.grid(alpha=0.3)
    title = (f"{m.backbone} on {advice.data_source}: {scenario_name(d)} -> "
             + (f"race winner: {advice.race['verdict']['winner']}" if advice.race and advice.race.get("verdict")
                else d.strategy + (f" on {d.layers}" if d.job == "probe" else "")))
    top.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def _plot_race(ax, race: dict) -> None:
    winner = (race.get("verdict") or {}).get("winner")
    for c in race["candidates"]:
        points = [(r["rung"], r["plans"][c["name"]]) for r in race["rungs"] if c["name"] in r["plans"]]
        if not points:
            continue
        xs, rows = [p[0] for p in points], [p[1] for p in points]
        ax.errorbar(xs, [r["accuracy"] for r in rows], yerr=[2 * r["se"] for r in rows], marker="o", capsize=3,
                    linewidth=2.5 if c["name"] == winner else 1.0,
                    label=c["name"] + (" (winner)" if c["name"] == winner else "") + (" (default)" if c["is_default"] else ""))
        if rows[-1]["dropped"]:
            ax.plot(xs[-1], rows[-1]["accuracy"], marker="x", color="black", markersize=10)
    ax.set_xlabel("rung (x: dropped; bars: 2 SE)")
    ax.set_ylabel("held-out accuracy")
    ax.set_xticks(range(len(race["rungs"])))
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)


__all__ = ["decision_text", "race_lines", "scenario_name", "markdown", "plot", "similarity_table", "size_table"]
