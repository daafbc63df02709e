"""Probes on frozen features: estimators, cross-validated fitting, fitted heads, the per-depth report, export."""

from .estimators import (
    CLASS_WEIGHTINGS,
    COMPARISON_PROBES,
    EXPORTABLE_PROBES,
    KERNEL_PROBES,
    LINEAR_PROBES,
    MAX_HEAD_BYTES,
    MLP_PROBES,
    PROBES,
    SELECTION_METRICS,
    MLPProbeClassifier,
    ProbeConfig,
    TorchLinearClassifier,
    resolve_probes,
)
from .export import export_probe, export_processor, init_head_from_probe
from .heads import KernelHead, LinearHead, MLPHead
from .report import DepthProbeReport, probe_features, probe_layers
from .search import ProbeResult, evaluate_probe, fit_probe

__all__ = [
    "CLASS_WEIGHTINGS",
    "COMPARISON_PROBES",
    "EXPORTABLE_PROBES",
    "KERNEL_PROBES",
    "LINEAR_PROBES",
    "MAX_HEAD_BYTES",
    "MLP_PROBES",
    "PROBES",
    "SELECTION_METRICS",
    "DepthProbeReport",
    "KernelHead",
    "LinearHead",
    "MLPHead",
    "MLPProbeClassifier",
    "ProbeConfig",
    "ProbeResult",
    "TorchLinearClassifier",
    "evaluate_probe",
    "export_probe",
    "export_processor",
    "fit_probe",
    "init_head_from_probe",
    "probe_features",
    "probe_layers",
    "resolve_probes",
]
