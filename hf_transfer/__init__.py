"""hf_transfer: transfer learning for pretrained vision backbones on the Hugging Face stack."""

__version__ = "0.1.0"

from .backbones import EMBEDDED_BACKBONES, BackboneAdapter, adapter_for, load_backbone, load_backbone_with_adapter, wrap_timm_model
from .data import EMBEDDED_DATASETS, load_image_classification_data
from .errors import TransferError
from .metrics import ClassificationMetrics, load_metric
from .plan import TransferConfig, TransferPlan


def __getattr__(name):
    # TransferTrainer imports transformers.Trainer: load it only when asked for
    if name in ("TransferTrainer", "TransferPlanCallback", "plan_optimizer"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'hf_transfer' has no attribute {name!r}")


# Registers the "hf_transfer_probe" model type (earlier-depth probes) with AutoConfig / AutoModelForImageClassification.
from . import modeling_probe  # noqa: E402

modeling_probe.register()

__all__ = [
    "EMBEDDED_BACKBONES",
    "EMBEDDED_DATASETS",
    "BackboneAdapter",
    "ClassificationMetrics",
    "TransferConfig",
    "TransferError",
    "TransferPlan",
    "TransferPlanCallback",
    "TransferTrainer",
    "adapter_for",
    "load_backbone",
    "load_backbone_with_adapter",
    "load_image_classification_data",
    "load_metric",
    "plan_optimizer",
    "wrap_timm_model",
]
