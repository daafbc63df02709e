"""The per-depth probe report: every (layer, probe) result, the best ones, a table and a plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .estimators import ProbeConfig, ProbeResult, evaluate_probe, fit_probe


@dataclass
class DepthProbeReport:
    """Every (layer, probe) result, and the best overall / best exportable by cross-validated score."""

    results: list[ProbeResult]
    eval_split: str

    def best(self, exportable_only: bool = False) -> ProbeResult | None:
        pool = [r for r in self.results if r.exportable or not exportable_only]
        return max(pool, key=lambda r: r.cv_score) if pool else None

    def table(self) -> str:
        metric = f"{self.eval_split}_accuracy"
        rows = [f"{'layer':<28} {'probe':<13} {'cv acc':>7} {self.eval_split + ' acc':>10} {'macro-F1':>9} {'fit s':>6}"]
        for r in self.results:
            rows.append(
                f"{r.layer.name:<28} {r.probe:<13} {r.cv_score:>7.4f} {r.eval_metrics.get(metric, float('nan')):>10.4f} "
                f"{r.eval_metrics.get(f'{self.eval_split}_macro_f1', float('nan')):>9.4f} {r.fit_seconds:>6.1f}"
            )
        return "\n".join(rows)

    def as_dict(self) -> dict:
        per_layer: dict[str, dict] = {}
        for r in self.results:
            per_layer.setdefault(r.layer.name, {})[r.probe] = r.summary()
        best, best_export = self.best(), self.best(exportable_only=True)
        return {
            "layers": per_layer,
            "best": best.summary() if best else None,
            "best_exportable": best_export.summary() if best_export else None,
            "eval_split": self.eval_split,
        }

    def plot(self, path: str | Path, title: str = "") -> Path:
        """Held-out accuracy per depth (one line per probe), pooled bottleneck last."""
        import textwrap

        from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global state, 0.3 s less import

        layers = list(dict.fromkeys(r.layer.name for r in self.results))
        fig = Figure(figsize=(max(6.0, 0.45 * len(layers) + 3), 4.2))
        ax = fig.subplots()
        for probe in dict.fromkeys(r.probe for r in self.results):
            points = [(layers.index(r.layer.name), r.eval_metrics.get(f"{self.eval_split}_accuracy", np.nan))
                      for r in self.results if r.probe == probe]
            ax.plot(*zip(*points), marker="o", label=probe)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([name.replace(" (", "\n(") for name in layers], rotation=60, fontsize=7, ha="right")
        ax.set_ylabel(f"{self.eval_split} accuracy")
        ax.set_title("\n".join(textwrap.wrap(title or "linear probe accuracy per depth", 70)), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return Path(path)


def probe_layers(feature_set, probes: Sequence[str], config: ProbeConfig | None = None, train_split: str = "train",
                 eval_split: str = "validation", log=None, score_cache=None) -> DepthProbeReport:
    """Fit every probe on every layer of ``feature_set`` and report the held-out split's metrics."""
    config = config or ProbeConfig()
    results = []
    y_train, y_eval = feature_set.labels[train_split], feature_set.labels.get(eval_split)
    for layer in feature_set.layers:
        X_train = feature_set.features[train_split][layer.key]
        for probe in probes:
            result = fit_probe(probe, layer, X_train, y_train, config, score_cache=score_cache)
            if y_eval is not None:
                evaluate_probe(result, feature_set.features[eval_split][layer.key], y_eval, prefix=eval_split)
            results.append(result)
            if log:
                log(f"{layer.name:<28} {probe:<12} cv {result.cv_score:.4f}  {eval_split} "
                    f"{result.eval_metrics.get(eval_split + '_accuracy', float('nan')):.4f}  "
                    f"({'fit from the cache' if result.from_cache else f'{result.fit_seconds:.1f}s'})")
    return DepthProbeReport(results, eval_split)
