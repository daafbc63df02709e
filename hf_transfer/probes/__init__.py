"""Linear probes on frozen features: estimators and cross-validation, the per-depth report, export as a model."""

from .estimators import (
    COMPARISON_PROBES,
    LINEAR_PROBES,
    PROBES,
    LinearHead,
    ProbeConfig,
    ProbeResult,
    TorchLinearClassifier,
    evaluate_probe,
    fit_probe,
    resolve_probes,
)
from .export import export_probe, init_head_from_probe
from .report import DepthProbeReport, probe_layers

__all__ = [
    "COMPARISON_PROBES",
    "LINEAR_PROBES",
    "PROBES",
    "DepthProbeReport",
    "LinearHead",
    "ProbeConfig",
    "ProbeResult",
    "TorchLinearClassifier",
    "evaluate_probe",
    "export_probe",
    "fit_probe",
    "init_head_from_probe",
    "probe_layers",
    "resolve_probes",
]
