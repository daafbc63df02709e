"""An exported intermediate-depth linear probe as a `transformers` model: ``model_type = "hf_transfer_probe"``.

The backbone is kept up to the probed depth group (later groups are dropped from the weights and never run: the
forward stops at the hooked group output), its output is pooled globally (mean over H×W or over tokens), and a
linear head with the standardization folded in gives the logits. The head is kept in float64 so that the logits
reproduce scikit-learn's ``decision_function`` to ~1e-6.

This file imports nothing from hf_transfer: an export copies it next to the weights and names it in the config's
``auto_map``, so the folder loads with ``trust_remote_code=True`` where hf_transfer is not installed. With
hf_transfer imported, `register()` makes the Auto classes know the type without remote code. Probes on the pooled
bottleneck are exported as the ordinary backbone class instead and need neither.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

PROBE_MODEL_TYPE = "hf_transfer_probe"


class HFTransferProbeConfig(PretrainedConfig):
    """Backbone config + where to cut it + how to pool, and the head size."""

    model_type = PROBE_MODEL_TYPE

    def __init__(
        self,
        backbone_config: dict | PretrainedConfig | None = None,
        output_module: str | None = None,
        depth: int | None = None,
        depth_name: str | None = None,
        pruned_modules: list[str] | None = None,
        nhwc: bool = False,
        num_features: int = 1,
        num_logits: int = 2,
        probe: str | None = None,
        **kwargs,
    ):
        if isinstance(backbone_config, dict):
            from transformers import CONFIG_MAPPING

            backbone_config = CONFIG_MAPPING[backbone_config["model_type"]].from_dict(backbone_config)
        self.backbone_config = backbone_config
        self.output_module = output_module
        self.depth = depth
        self.depth_name = depth_name
        self.pruned_modules = list(pruned_modules or [])
        self.nhwc = nhwc
        self.num_features = num_features
        self.num_logits = num_logits
        self.probe = probe
        super().__init__(**kwargs)

    def to_dict(self):
        output = super().to_dict()
        if isinstance(self.backbone_config, PretrainedConfig):
            output["backbone_config"] = self.backbone_config.to_dict()
        return output


def module_is_nhwc(module: torch.nn.Module, default: bool = False) -> bool:
    """Whether a module's 4-D output is (N, H, W, C): timm modules say so in ``output_fmt`` (e.g. ViT patch_embed)."""
    fmt = getattr(module, "output_fmt", None)
    if fmt is None:
        return default
    return str(getattr(fmt, "value", fmt)).upper().endswith("NHWC")


def global_pool(output, nhwc: bool = False) -> torch.Tensor:
    """A depth group's output -> (N, C): mean over H×W (CNN maps) or over tokens (N, L, C)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    elif not isinstance(output, torch.Tensor) and hasattr(output, "to_tuple"):  # a transformers ModelOutput
        output = output.to_tuple()[0]
    if output.ndim == 4:
        return output.mean(dim=(1, 2) if nhwc else (2, 3))
    if output.ndim == 3:
        return output.mean(dim=1)
    if output.ndim == 2:
        return output
    raise ValueError(f"cannot pool a layer output of shape {tuple(output.shape)}; choose another depth with --layers")


class _Pruned(torch.nn.Module):
    """Stands in for a module after the probed depth: it has no weights and must never run."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("this part of the backbone was removed when the probe was exported")


class _StopForward(Exception):
    pass


def _replace_module(root: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    parent._modules[child] = new


class HFTransferProbeForImageClassification(PreTrainedModel):
    """Truncated backbone -> global pooling -> folded linear head (float64)."""

    config_class = HFTransferProbeConfig
    base_model_prefix = "probe"
    main_input_name = "pixel_values"
    _no_split_modules = []

    def __init__(self, config: HFTransferProbeConfig):
        super().__init__(config)
        self.backbone = AutoModelForImageClassification.from_config(config.backbone_config)
        for name in config.pruned_modules:
            _replace_module(self.backbone, name, _Pruned())
        self.classifier = torch.nn.Linear(config.num_features, config.num_logits, dtype=torch.float64)
        self.post_init()

    def _init_weights(self, module):
        if module is getattr(self, "classifier", None):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)

    def pooled_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        captured = {}

        def hook(module, args, output):
            captured["features"] = global_pool(output, module_is_nhwc(module, self.config.nhwc))
            raise _StopForward

        handle = self.backbone.get_submodule(self.config.output_module).register_forward_hook(hook)
        try:
            self.backbone(pixel_values=pixel_values)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured["features"]

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs):
        features = self.pooled_features(pixel_values)
        logits = self.classifier(features.to(self.classifier.weight.dtype))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        if return_dict is False:
            return (loss, logits) if loss is not None else (logits,)
        return ImageClassifierOutput(loss=loss, logits=logits)


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModelForImageClassification`` / pipeline() know ``hf_transfer_probe``."""
    try:
        AutoConfig.register(PROBE_MODEL_TYPE, HFTransferProbeConfig)
        AutoModelForImageClassification.register(HFTransferProbeConfig, HFTransferProbeForImageClassification)
    except ValueError:  # already registered (module re-imported)
        pass
