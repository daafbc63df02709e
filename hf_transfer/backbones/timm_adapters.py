"""Adapters for timm models, wrapped in `TimmWrapperForImageClassification` (or bare timm modules).

timm describes its own models: ``group_matcher`` gives the depth groups, ``pretrained_cfg["classifier"]`` names the
classifier(s), ``forward_head(pre_logits=True)`` is the pooled feature and ``set_input_size`` changes the resolution
where the family supports it. What timm leaves open is found by running the model once: which parameters under the
classifier's module run before the pooled feature (ConvNeXt's ``head.norm``: body) and which after (LeViT's and
EfficientViT's ``head.bn``: head).
"""

from __future__ import annotations

import torch

from ..errors import TransferError
from ..layers import LayerMap, build_groups
from .adapter import BackboneAdapter, name_some, register_adapter, structural_lora_targets, trace_run_order


def _grid(tokens: int, prefix_tokens: int) -> str:
    side = int(round((tokens - prefix_tokens) ** 0.5))
    return f"{side}x{side}"


@register_adapter
class TimmAdapter(BackboneAdapter):
    family = "timm"
    summary = ("timm models: depth groups from group_matcher, pooled feature from forward_head(pre_logits=True), "
               "set_input_size where the model has it")

    def __init__(self, model, image_processor=None):
        super().__init__(model, image_processor)
        self.wrapped = getattr(getattr(model, "config", None), "model_type", None) == "timm_wrapper"
        self.inner = model.timm_model if self.wrapped else model
        self.prefix = "timm_model." if self.wrapped else ""

    @classmethod
    def matches(cls, model) -> bool:
        if getattr(getattr(model, "config", None), "model_type", None) == "timm_wrapper":
            return True
        return hasattr(model, "pretrained_cfg") and hasattr(model, "group_matcher") and not hasattr(model, "config")

    @property
    def note(self) -> str | None:
        if hasattr(self.inner, "group_matcher"):
            return None
        return (f"timm {type(self.inner).__name__} has no group_matcher: depth groups from generic rules (pass "
                "--layer_regex if the depth table looks wrong)")

    # ------------------------------------------------------------------------------------------- structure
    def classifier_names(self) -> list[str]:
        classifier = self.inner.pretrained_cfg.get("classifier") or "head"
        return list(classifier) if isinstance(classifier, (list, tuple)) else [classifier]

    def head_roots(self) -> list[str]:
        return list(dict.fromkeys(self.prefix + name.split(".")[0] for name in self.classifier_names()))

    def classifier_linears(self) -> list[tuple[str, torch.nn.Linear]]:
        """The linears timm names as classifiers (RepViT keeps both twins under one ``head``: ``head.head.l`` and
        ``head.head_dist.l``); the generic search when a named one is not a Linear."""
        modules = dict(self.model.named_modules())
        named = [(self.prefix + n, modules.get(self.prefix + n)) for n in self.classifier_names()]
        if len(named) > 1 and all(isinstance(m, torch.nn.Linear) for _, m in named):
            return named
        return super().classifier_linears()

    def run(self, pixel_values):
        return self.model(pixel_values=pixel_values) if self.wrapped else self.model(pixel_values)

    def forward_pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.inner.forward_head(self.inner.forward_features(pixel_values), pre_logits=True)

    def run_order(self) -> list[str]:
        """Modules in the order the pooled path runs them (one eval forward at the native size): the classifier's
        modules missing from it are the head."""
        if not hasattr(self, "_run_order"):
            inner_order = trace_run_order(self.inner, lambda: self.forward_pooled(self.native_input()))
            self._run_order = [self.prefix + n if n else self.prefix.rstrip(".") for n in inner_order]
        return self._run_order

    def head_params(self) -> list[str]:
        """Parameters under the classifier modules that do not run before the pooled feature."""
        if not hasattr(self, "_head_params"):
            before = set(self.run_order())
            roots = tuple(r + "." for r in self.head_roots())
            self._head_params = [n for n, _ in self.model.named_parameters()
                                 if n.startswith(roots) and n.rpartition(".")[0] not in before]
        return self._head_params

    def _build_layer_map(self, layer_regex: str | None) -> LayerMap:
        if layer_regex or not hasattr(self.inner, "group_matcher"):  # (PiT has none: the generic rules take it)
            return super()._build_layer_map(layer_regex)
        from timm.models import group_parameters

        grouped = group_parameters(self.inner, self.inner.group_matcher(coarse=False))
        ordered = [("stem" if i == 0 else None, [self.prefix + n for n in names])
                   for i, (_, names) in enumerate(sorted(grouped.items()))]
        return build_groups(self.model, ordered, self.head_params(), "timm group_matcher", self.run_order(),
                            strip=self.prefix)

    def pooled_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.forward_pooled(pixel_values).flatten(1)

    @property
    def nhwc_default(self) -> bool:
        return getattr(self.inner, "output_fmt", "NCHW") == "NHWC"

    def feature_layout(self, module) -> bool:
        fmt = getattr(module, "output_fmt", None)
        if fmt is None:
            return self.nhwc_default
        return str(getattr(fmt, "value", fmt)).upper().endswith("NHWC")

    def lora_targets(self) -> tuple[list[str], str]:
        """``qkv`` of every attention block for ViTs, the body's dense layers for CNNs (`structural_lora_targets`)."""
        return structural_lora_targets(self.model, self.layer_map())

    # ------------------------------------------------------------------------------------------ input size
    def change_input_size(self, image_size: int) -> str:
        fixed = self.size_dependent_params()
        if not hasattr(self.inner, "set_input_size"):
            if fixed:
                raise TransferError(f"--image_size {image_size}: timm {type(self.inner).__name__} has size-dependent "
                                    f"parameters ({name_some(fixed, self.prefix)}) and "
                                    "no set_input_size; use its native size "
                                    f"({self.data_config()['input_size'][-1]} px)")
            return self._forward_check(image_size, f"{image_size} px: no size-dependent parameters (global pooling), "
                                                    "the weights are unchanged")
        patch = getattr(getattr(self.inner, "patch_embed", None), "patch_size", None)
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        if patch and image_size % patch:
            raise TransferError(f"--image_size {image_size} is not a multiple of the patch size {patch}; "
                                f"use e.g. {image_size // patch * patch}")
        current = getattr(getattr(self.inner, "patch_embed", None), "img_size", None)
        if current is not None and tuple(current) == (image_size, image_size):
            return self._forward_check(image_size, f"{image_size} px: the native size, nothing changed")
        before = {n: p.shape for n, p in self.model.named_parameters()}
        try:
            self.inner.set_input_size(img_size=image_size)
        except Exception as err:  # noqa: BLE001 - timm's own refusal (window and grid constraints)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise TransferError(f"--image_size {image_size}: timm {type(self.inner).__name__}.set_input_size refused "
                                f"({first}); use its native size or another --image_size") from None
        # A saved folder rebuilds the timm model from config.model_args: record the size there too.
        if self.wrapped:
            self.model.config.model_args = {**(self.model.config.model_args or {}), "img_size": image_size}
        after = {n: p.shape for n, p in self.model.named_parameters()}
        changed = [n for n in before if after.get(n) != before[n]]
        if not changed:
            report = (f"{image_size} px: set_input_size re-laid the patch grid and windows; no weight changed shape "
                      f"({len(fixed)} size-dependent tables kept)" if fixed else
                      f"{image_size} px: set_input_size updated the model; no weight changed shape")
        else:
            name = changed[0]
            prefix = getattr(self.inner, "num_prefix_tokens", 1) if not getattr(self.inner, "no_embed_class", False) else 0
            if len(before[name]) == 3:
                report = (f"{image_size} px: position embeddings {name.removeprefix(self.prefix)} resampled from grid "
                          f"{_grid(before[name][1], prefix)} to {_grid(after[name][1], prefix)} ({before[name].numel()} -> "
                          f"{after[name].numel()} values); other weights unchanged")
            else:
                report = (f"{image_size} px: {name_some(changed, self.prefix)} resampled by set_input_size; "
                          "other weights unchanged")
        return self._forward_check(image_size, report)

    def total_stride(self) -> int | None:
        info = getattr(self.inner, "feature_info", None)
        if info and isinstance(info, list) and isinstance(info[-1], dict) and info[-1].get("reduction"):
            return int(info[-1]["reduction"])
        return None

    # -------------------------------------------------------------------------------------- preprocessing
    def data_config(self) -> dict:
        import timm.data

        if self.wrapped:
            return timm.data.resolve_data_config(pretrained_cfg=dict(self.model.config.pretrained_cfg))
        return timm.data.resolve_model_data_config(self.inner)

    def set_preprocessing(self, image_size: int | None) -> None:
        """Record the resolution the model is trained at, so a saved folder preprocesses at that size."""
        if image_size is None:
            return
        super().set_preprocessing(image_size)
        size = (3, int(image_size), int(image_size))
        self.inner.pretrained_cfg = {**self.inner.pretrained_cfg, "input_size": size}
        if self.wrapped:
            self.model.config.pretrained_cfg = {**dict(self.model.config.pretrained_cfg), "input_size": list(size)}

    def image_processor(self, image_size: int | None = None):
        return None  # timm keeps its preprocessing in config.json (pretrained_cfg)

    def native_state_dict(self, state_dict: dict | None = None) -> dict | None:
        # timm Hub checkpoints have no `timm_model.` prefix: timm's local-dir loader reads such a folder, and
        # transformers adds the prefix back on load.
        if not self.wrapped:
            return state_dict
        weights = self.model.state_dict() if state_dict is None else state_dict
        return {name.removeprefix(self.prefix): tensor for name, tensor in weights.items()}

    def config_preprocessing(self) -> dict:
        if not self.wrapped:
            return {}
        return {"pretrained_cfg": dict(self.model.config.pretrained_cfg), "image_processor_type": "TimmWrapperImageProcessor"}


@register_adapter
class TimmDistilledAdapter(TimmAdapter):
    """DeiT-style distilled models: a class and a distillation classifier whose logits are averaged."""

    family = "timm distilled"
    summary = "two classifiers (head, head_dist) averaged: a probe is written into both; trains on the average"

    @classmethod
    def matches(cls, model) -> bool:
        return TimmAdapter.matches(model) and hasattr(getattr(model, "timm_model", model), "set_distilled_training")

    def trainable_model(self):
        # With distilled training on, the train-mode forward returns a (class, distillation) pair: no single loss.
        self.inner.set_distilled_training(False)
        return self.model


@register_adapter
class TimmLevitAdapter(TimmDistilledAdapter):
    """LeViT: BatchNorm-before-linear twin heads, and attention biases laid out for one resolution."""

    family = "timm LeViT"
    summary = "norm-before-linear twin heads; attention biases fixed to the training resolution (size change refused)"

    @classmethod
    def matches(cls, model) -> bool:
        return TimmAdapter.matches(model) and type(getattr(model, "timm_model", model)).__name__.startswith("Levit")

    def change_input_size(self, image_size: int) -> str:
        native = int(self.data_config()["input_size"][-1])
        if image_size == native:
            return f"{image_size} px: the native size, nothing changed"
        raise TransferError(f"--image_size {image_size}: LeViT's attention biases are laid out for {native} px inputs "
                            f"and timm cannot resample them; use --image_size {native} or another backbone")
