"""`Advice`: the measurements of every candidate, the ranking, the decision and the plan, and the files they make."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .measure import BackboneMeasurement
from .rank import ranking_rows, ranking_table
from .recipe import RECIPES, plan_config, write_plan_yaml
from .report import decision_text, markdown, plot, scenario_name, similarity_table, size_table
from .rules import Decision, Thresholds

ADVICE_FILES = ("advice.json", "advice.md", "advice.png", "plan.yaml")


@dataclass
class Advice:
    ranked: list[BackboneMeasurement]  # best first; the plan is for the first
    decision: Decision
    data_source: str
    plan: dict  # the recipe's flags
    thresholds: Thresholds = field(default_factory=Thresholds)
    time_budget: float | None = None
    seconds: float = 0.0
    plan_path_hint: str = "plan.yaml"
    race: dict | None = None  # the race's record (jobs/race.py), when --strategy auto raced the candidates
    budget: dict | None = None  # --time_budget: planned against used (seconds)
    deadline: float | None = None  # `time.perf_counter()` at which the whole budgeted run must end (not saved)
    started: float | None = None  # `time.perf_counter()` when the run began (not saved)
    start_optimizer: dict | None = None  # the race winner's optimizer state, for its real run (not saved)
    start_schedule: dict | None = None  # where the race left the winner's schedule: {"offset", "warmup_steps"}
    final_run: dict | None = None  # the chosen plan's run once it ended: its scores (advice.json is rewritten)

    @property
    def chosen(self) -> BackboneMeasurement:
        return self.ranked[0]

    @property
    def recipe(self) -> str:
        return RECIPES[self.decision.job]

    def header(self) -> list[str]:
        d, m = self.decision, self.chosen
        return [f"hf_transfer advise: {m.backbone} on {self.data_source}",
                f"scenario: {scenario_name(d)} -> {d.strategy}"
                + (f" on {d.layers}" if d.job == "probe" else ""),
                f"probe cv: best {m.similarity.best.probe_cv:.4f} at {m.similarity.best.name}, pooled "
                f"{m.similarity.pooled.probe_cv:.4f}; {m.size.n_train} training images, {m.size.n_classes} classes"]

    def plan_yaml_body(self) -> str:
        import yaml

        return yaml.safe_dump(self.plan, sort_keys=False, default_flow_style=False).rstrip()

    def summary(self) -> str:
        """What the advise command prints: size, similarity, ranking, scenario, plan."""
        parts = ["size of the data:\n" + size_table(self.chosen.size),
                 f"similarity per depth ({self.chosen.backbone}, {self.chosen.cost.image_size} px):\n"
                 + similarity_table(self.chosen.similarity, self.decision)]
        if len(self.ranked) > 1:
            parts.append("backbone ranking (before any fine-tuning):\n" + ranking_table(self.ranked))
        parts.append(decision_text(self.decision))
        estimate = (f"\n(estimated {self.decision.estimated_seconds:.0f} s on this machine"
                    + (f", budget {self.time_budget:.0f} s)" if self.time_budget else ")")
                    if self.decision.estimated_seconds is not None else "")
        parts.append(f"plan ({self.recipe}):\n" + self.plan_yaml_body() + estimate)
        return "\n\n".join(parts)

    def as_dict(self) -> dict:
        return {
            "data": self.data_source,
            "chosen_backbone": self.chosen.backbone,
            "decision": self.decision.as_dict(),
            "recipe": self.recipe,
            "plan": self.plan,
            "ranking": ranking_rows(self.ranked),
            "measurements": [m.as_dict() for m in self.ranked],
            "thresholds": asdict(self.thresholds),
            "time_budget": self.time_budget,
            "seconds": round(self.seconds, 2),
            "race": self.race,
            "budget": self.budget,
            "final_run": self.final_run,
        }

    def write(self, folder: str | Path, plan_name: str = "plan.yaml") -> dict[str, Path]:
        """advice.json, advice.md, advice.png and the plan (plan.yaml) into ``folder``."""
        from ..saving import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"plan": write_plan_yaml(folder / plan_name, self.decision, self.plan, self.header(), self.plan_path_hint)}
        write_json(folder / "advice.json", self.as_dict())
        paths["json"] = folder / "advice.json"
        paths["png"] = plot(self, folder / "advice.png")
        (folder / "advice.md").write_text(markdown(self))
        paths["md"] = folder / "advice.md"
        return paths


def build_advice(measurements: list[BackboneMeasurement], data_args, *, data_source: str, output_dir: str | None,
                 time_budget: float | None, batch_size: int, seed: int, thresholds: Thresholds | None = None,
                 started: float | None = None) -> Advice:
    """Rank the candidates, decide for the best one, and turn the decision into the recipe's flags."""
    from .rank import rank_backbones
    from .rules import decide

    thresholds = thresholds or Thresholds()
    ranked = rank_backbones(measurements)
    chosen = ranked[0]
    decision = decide(chosen, time_budget=time_budget, batch_size=batch_size, thresholds=thresholds)
    plan = plan_config(decision, backbone=chosen.backbone, image_size=chosen.cost.image_size, data_args=data_args,
                       output_dir=output_dir, batch_size=batch_size,
                       time_budget=time_budget if decision.job == "finetune" else None, seed=seed)
    seconds = time.perf_counter() - started if started is not None else sum(m.seconds for m in measurements)
    return Advice(ranked, decision, data_source, plan, thresholds, time_budget, seconds)


__all__ = ["ADVICE_FILES", "Advice", "build_advice"]
