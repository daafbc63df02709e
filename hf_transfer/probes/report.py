"""The per-depth probe report: every (layer, probe) result, the best ones, a table and a plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..features import FeatureLayer, concat_features
from .estimators import ProbeConfig
from .search import ProbeResult, evaluate_probe, fit_probe


@dataclass
class DepthProbeReport:
    """Every (layer, probe) result, and the best overall / best exportable by cross-validated score."""

    results: list[ProbeResult]
    eval_split: str
    label_names: list[str] | None = field(default=None)

    def best(self, exportable_only: bool = False) -> ProbeResult | None:
        pool = [r for r in self.results if r.exportable or not exportable_only]
        return max(pool, key=lambda r: r.cv_score) if pool else None

    def better_non_exportable(self) -> ProbeResult | None:
        """The best probe by CV when it cannot be exported and beats every exportable one (else None)."""
        best, best_export = self.best(), self.best(exportable_only=True)
        if best is None or best.exportable or (best_export is not None and best_export.cv_score >= best.cv_score):
            return None
        return best

    def table(self) -> str:
        metric = f"{self.eval_split}_accuracy"
        width = max([28] + [len(r.layer.name) for r in self.results])
        rows = [f"{'layer':<{width}} {'probe':<13} {'cv acc':>7} {'cv F1':>7} {self.eval_split + ' acc':>10} "
                f"{'macro-F1':>9} {'fit s':>6}"]
        for r in self.results:
            rows.append(
                f"{r.layer.name:<{width}} {r.probe:<13} {r.cv_metrics.get('accuracy', r.cv_score):>7.4f} "
                f"{r.cv_metrics.get('macro_f1', float('nan')):>7.4f} {r.eval_metrics.get(metric, float('nan')):>10.4f} "
                f"{r.eval_metrics.get(f'{self.eval_split}_macro_f1', float('nan')):>9.4f} {r.fit_seconds:>6.1f}"
            )
        return "\n".join(rows)

    def recall_table(self, result: ProbeResult, split: str | None = None) -> str:
        """Per-class recall of one probe on a split, one line per class, worst first."""
        split = split or self.eval_split
        recalls = result.per_class_recall.get(split, {})
        if not recalls:
            return ""
        width = max(len(name) for name in recalls)
        lines = [f"per-class {split} recall of {result.probe} on {result.layer.name} (worst first):"]
        lines += [f"  {name:<{width}} {value:.4f}" for name, value in sorted(recalls.items(), key=lambda kv: kv[1])]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        per_layer: dict[str, dict] = {}
        for r in self.results:
            per_layer.setdefault(r.layer.name, {})[r.probe] = r.summary()
        best, best_export, better = self.best(), self.best(exportable_only=True), self.better_non_exportable()
        return {
            "layers": per_layer,
            "best": best.summary() if best else None,
            "best_exportable": best_export.summary() if best_export else None,
            "better_non_exportable": better.summary() if better else None,
            "selected_by": self.results[0].selected_by if self.results else None,
            "eval_split": self.eval_split,
        }

    def plot(self, path: str | Path, title: str = "", highlight: ProbeResult | None = None) -> Path:
        """Held-out accuracy per layer (one line per probe; pooled, then concatenations, last) and, for
        ``highlight`` (the exported probe), its per-class recall."""
        import textwrap

        from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global state, 0.3 s less import

        layers = list(dict.fromkeys(r.layer.name for r in self.results))
        recalls = highlight.per_class_recall.get(self.eval_split, {}) if highlight is not None else {}
        fig = Figure(figsize=(max(6.0, 0.45 * len(layers) + 3) + (min(6.0, 1 + 0.3 * len(recalls)) if recalls else 0), 4.2))
        axes = fig.subplots(1, 2, width_ratios=[max(6.0, 0.45 * len(layers) + 3), min(6.0, 1 + 0.3 * len(recalls))]) \
            if recalls else [fig.subplots()]
        ax = axes[0]
        for probe in dict.fromkeys(r.probe for r in self.results):
            points = [(layers.index(r.layer.name), r.eval_metrics.get(f"{self.eval_split}_accuracy", np.nan))
                      for r in self.results if r.probe == probe]
            ax.plot(*zip(*points), marker="o", label=probe)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([name.replace(" (", "\n(") for name in layers], rotation=60, fontsize=7, ha="right")
        ax.set_ylabel(f"{self.eval_split} accuracy")
        ax.set_title("\n".join(textwrap.wrap(title or "probe accuracy per depth", 70)), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if recalls:
            bar = axes[1]
            names = list(recalls)
            bar.barh(range(len(names)), [recalls[n] for n in names])
            bar.set_yticks(range(len(names)))
            bar.set_yticklabels(names, fontsize=7)
            bar.invert_yaxis()
            bar.set_xlim(0, 1)
            bar.set_xlabel(f"{self.eval_split} recall")
            f1 = highlight.eval_metrics.get(f"{self.eval_split}_macro_f1", float("nan"))
            bar.set_title("\n".join(textwrap.wrap(f"{highlight.probe} on {highlight.layer.name}: per-class recall "
                                                  f"(macro-F1 {f1:.3f})", 40)), fontsize=8)
            bar.grid(alpha=0.3, axis="x")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return Path(path)


def probe_features(train: dict[str, np.ndarray], y_train: np.ndarray, layers: Sequence[FeatureLayer],
                   probes: Sequence[str], config: ProbeConfig | None = None, *,
                   held_out: dict[str, np.ndarray] | None = None, y_held_out: np.ndarray | None = None,
                   eval_split: str = "validation", label_names: Sequence[str] | None = None, log=None,
                   score_cache=None) -> DepthProbeReport:
    """Fit every probe on every layer and report the held-out split's metrics.

    ``train`` / ``held_out`` map single layer keys (``FeatureLayer.key``) to (N, C) features, as
    ``FeatureSet.features[split]`` does; a concatenation in ``layers`` is assembled from its parts when the dict
    does not hold it. Without a held-out split only CV scores are reported.
    """
    config = config or ProbeConfig()
    results = []
    for layer in layers:
        X_train = concat_features(train, layer)
        for probe in probes:
            result = fit_probe(probe, layer, X_train, y_train, config, score_cache=score_cache,
                               blocks=[train[part.key].shape[1] for part in layer.parts] if layer.is_concat else None)
            if held_out is not None and y_held_out is not None:
                evaluate_probe(result, concat_features(held_out, layer), y_held_out, prefix=eval_split,
                               label_names=label_names)
            results.append(result)
            if log:
                log(f"{layer.name:<28} {probe:<12} cv {result.cv_score:.4f}  {eval_split} "
                    f"{result.eval_metrics.get(eval_split + '_accuracy', float('nan')):.4f}  "
                    f"({'fit from the cache' if result.from_cache else f'{result.fit_seconds:.1f}s'})")
    return DepthProbeReport(results, eval_split, list(label_names) if label_names is not None else None)


def probe_layers(feature_set, probes: Sequence[str], config: ProbeConfig | None = None, train_split: str = "train",
                 eval_split: str = "validation", log=None, score_cache=None,
                 label_names: Sequence[str] | None = None) -> DepthProbeReport:
    """Fit every probe on every layer of ``feature_set`` (a `FeatureSet`) and report the held-out split's metrics."""
    has_eval = eval_split in feature_set.labels
    return probe_features(feature_set.features[train_split], feature_set.labels[train_split], feature_set.layers,
                          probes, config, held_out=feature_set.features[eval_split] if has_eval else None,
                          y_held_out=feature_set.labels.get(eval_split), eval_split=eval_split,
                          label_names=label_names, log=log, score_cache=score_cache)
