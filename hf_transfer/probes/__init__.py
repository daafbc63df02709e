"""Probes on frozen features: estimators and cross-validation, the per-depth report, export as a model."""

from .estimators import (
    CLASS_WEIGHTINGS,
    COMPARISON_PROBES,
    EXPORTABLE_PROBES,
    LINEAR_PROBES,
    MLP_PROBES,
    PROBES,
    SELECTION_METRICS,
    LinearHead,
    MLPHead,
    MLPProbeClassifier,
    ProbeConfig,
    ProbeResult,
    TorchLinearClassifier,
    evaluate_probe,
    fit_probe,
    resolve_probes,
)
from .export import export_probe, init_head_from_probe
from .report import DepthProbeReport, probe_features, probe_layers

__all__ = [
    "CLASS_WEIGHTINGS",
    "COMPARISON_PROBES",
    "EXPORTABLE_PROBES",
    "LINEAR_PROBES",
    "MLP_PROBES",
    "PROBES",
    "SELECTION_METRICS",
    "DepthProbeReport",
    "LinearHead",
    "MLPHead",
    "MLPProbeClassifier",
    "ProbeConfig",
    "ProbeResult",
    "TorchLinearClassifier",
    "evaluate_probe",
    "export_probe",
    "fit_probe",
    "init_head_from_probe",
    "probe_features",
    "probe_layers",
    "resolve_probes",
]
