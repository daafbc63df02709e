"""Adapters for transformers image classifiers (``…ForImageClassification``).

The base model sits under ``base_model_prefix``; everything else with parameters is head, except what runs before
the features are pooled (SwiftFormer's final ``norm`` sits beside the base model but acts on the feature map).
Blocks are found by name (``layers.N`` / ``stages.N`` / ``blocks.N`` …) and ordered by an execution trace.
"""

from __future__ import annotations

import torch

from ..errors import TransferError
from .adapter import BackboneAdapter, name_some, register_adapter, structural_lora_targets


def _is_pooled(tensor) -> bool:
    """(N, C) or (N, C, 1, 1): no spatial or token axis left."""
    return isinstance(tensor, torch.Tensor) and (tensor.ndim == 2 or (tensor.ndim == 4 and tensor.shape[-2:].numel() == 1))


@register_adapter
class TransformersAdapter(BackboneAdapter):
    family = "transformers"
    summary = "transformers classifiers: base model by base_model_prefix, blocks by name in forward order"
    rule_source = "transformers rules"

    @classmethod
    def matches(cls, model) -> bool:
        config = getattr(model, "config", None)
        return config is not None and getattr(config, "model_type", None) != "timm_wrapper" and bool(
            getattr(model, "base_model_prefix", "")) and hasattr(model, model.base_model_prefix)

    @property
    def note(self) -> str | None:
        return None

    def run(self, pixel_values):
        return self.model(pixel_values=pixel_values)

    def _outside_base(self) -> list[str]:
        return [n for n, m in self.model.named_children()
                if n != self.model.base_model_prefix and any(True for _ in m.parameters())]

    def head_roots(self) -> list[str]:
        """Children outside the base model whose input is already pooled (found by one traced forward)."""
        if not hasattr(self, "_head_roots"):
            candidates = self._outside_base()
            pooled_input: dict[str, bool] = {}
            modules = dict(self.model.named_children())
            def record(name, args) -> None:  # a pre-hook must return None, or it replaces the module's input
                pooled_input.setdefault(name, bool(args) and _is_pooled(args[0]))

            handles = [modules[name].register_forward_pre_hook(lambda mod, args, name=name: record(name, args))
                       for name in candidates]
            was_training = self.model.training
            self.model.eval()
            native = self.native_input()
            try:
                with torch.no_grad():
                    # Twice the native size first: a stride-32 map at a tiny native size is 1x1 and looks pooled.
                    for x in (torch.zeros(1, 3, 2 * native.shape[-2], 2 * native.shape[-1]), native):
                        try:
                            pooled_input.clear()
                            self.run(x)
                            break
                        except Exception:  # noqa: BLE001 - fixed-size models: the native size
                            continue
                    else:
                        pooled_input.clear()  # no trace: every child outside the base model is head
            finally:
                for handle in handles:
                    handle.remove()
                self.model.train(was_training)
            self._head_roots = [n for n in candidates if pooled_input.get(n, True)]
            if not self._head_roots:
                raise TransferError(f"cannot find the classifier of {type(self.model).__name__}; pass a model with a "
                                    "classification head")
        return self._head_roots

    def lora_targets(self) -> tuple[list[str], str]:
        """``q_proj`` / ``v_proj`` (transformers 5 names) for ViT-style models, the body's dense layers for CNNs."""
        return structural_lora_targets(self.model, self.layer_map())

    # ------------------------------------------------------------------------------------------ input size
    def change_input_size(self, image_size: int) -> str:
        fixed = self.size_dependent_params()
        if not fixed:
            return self._forward_check(image_size, f"{image_size} px: no size-dependent parameters (global pooling), "
                                                    "the weights are unchanged")
        # Tables tied to a grid or a window that the model interpolates or pads at run time (Swin, DINOv2): the
        # forward decides; a model that cannot take the size fails here, not at the next training step.
        kept = "" if self.config_fits(image_size) else (
            f"; config.json keeps image_size {self.model.config.image_size} so that the saved tables load")
        return self._forward_check(image_size, f"{image_size} px: taken as it is ({name_some(fixed)} interpolated or "
                                                f"windowed at run time); the weights are unchanged{kept}")

    def total_stride(self) -> int | None:
        patch = getattr(self.model.config, "patch_size", None)
        if isinstance(patch, (list, tuple)):
            patch = patch[0]
        return int(patch) if patch else None

    # -------------------------------------------------------------------------------------- preprocessing
    def data_config(self) -> dict:
        """From the checkpoint's image processor, else from the config (mean/std 0.5)."""
        size = getattr(self.model.config, "image_size", 224)
        size = size[0] if isinstance(size, (list, tuple)) else size
        # crop_mode "squash": the processor saved beside the model resizes to height x width (image_processor), so
        # training stretches non-square images the same way; shortest-edge processors keep "center".
        cfg = {"input_size": (3, int(size), int(size)), "interpolation": "bilinear", "mean": (0.5,) * 3,
               "std": (0.5,) * 3, "crop_pct": 1.0, "crop_mode": "squash"}
        processor = self.image_processor_
        if processor is not None:
            if "shortest_edge" in (getattr(processor, "size", None) or {}):
                cfg["crop_mode"] = "center"
            crop = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
            size = self.image_size or crop.get("height") or crop.get("shortest_edge") or size
            cfg.update(
                input_size=(3, int(size), int(size)),
                mean=tuple(getattr(processor, "image_mean", None) or cfg["mean"]),
                std=tuple(getattr(processor, "image_std", None) or cfg["std"]),
                crop_pct=getattr(processor, "crop_pct", None) or 1.0,
                interpolation="bicubic" if int(getattr(processor, "resample", 2) or 2) == 3 else "bilinear",
            )
        return cfg

    def set_preprocessing(self, image_size: int | None) -> None:
        if image_size is None:
            return
        super().set_preprocessing(image_size)  # wins over the processor's own size
        if self.config_fits(int(image_size)):
            self.model.config.image_size = _like(getattr(self.model.config, "image_size", None), int(image_size))
        # else the config keeps the size its tables were built for (Data2VecVision / BEiT relative position bias):
        # a saved folder then rebuilds tables that fit its weights, and the processor alone carries the new size.

    def config_fits(self, image_size: int) -> bool:
        """Whether a model built from the config at ``image_size`` has exactly this model's parameter shapes (what
        loading a saved folder does); built on the meta device, no memory."""
        import copy

        config = copy.deepcopy(self.model.config)
        config.image_size = _like(getattr(config, "image_size", None), image_size)
        try:
            with torch.device("meta"):
                fresh = type(self.model)(config)
        except Exception:  # noqa: BLE001 - a config this size cannot describe: keep the current one
            return False
        mine = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        return mine == {k: tuple(v.shape) for k, v in fresh.state_dict().items()}

    def image_processor(self, image_size: int | None = None):
        """The checkpoint's processor resized to the training resolution, or a plain resize-and-normalize one."""
        processor = self.image_processor_
        if processor is None:
            return super().image_processor(image_size)
        cfg = self.data_config()
        size = int(image_size or cfg["input_size"][-1])
        if "height" in (getattr(processor, "size", None) or {}):
            processor.size = {"height": size, "width": size}
        elif "shortest_edge" in (getattr(processor, "size", None) or {}):
            processor.size = {"shortest_edge": int(size / (cfg.get("crop_pct") or 1.0))}
        if getattr(processor, "crop_size", None):
            processor.crop_size = {"height": size, "width": size}
        return processor


def _like(current, size: int):
    """``size`` in the form config.image_size has: a number, or a [height, width] pair (Hiera)."""
    return [size, size] if isinstance(current, (list, tuple)) else size


@register_adapter
class TransformersPatchEmbeddingAdapter(TransformersAdapter):
    """ViT-style models (ViT, DeiT, BEiT …): position embeddings for a fixed patch grid, resampled on a size change."""

    family = "transformers ViT-style"
    summary = "absolute position embeddings resampled (interpolate_pos_encoding) on a size change"

    @classmethod
    def matches(cls, model) -> bool:
        if not TransformersAdapter.matches(model):
            return False
        embeddings = getattr(getattr(model, model.base_model_prefix), "embeddings", None)
        patches = getattr(embeddings, "patch_embeddings", None)
        # a plain patch grid (patch_size, image_size): Hiera's mask-unit embeddings have neither, and go generic
        return (hasattr(embeddings, "interpolate_pos_encoding") and hasattr(patches, "patch_size")
                and hasattr(patches, "image_size")
                and isinstance(getattr(embeddings, "position_embeddings", None), torch.nn.Parameter))

    def change_input_size(self, image_size: int) -> str:
        embeddings = getattr(self.model, self.model.base_model_prefix).embeddings
        patch_embeddings = embeddings.patch_embeddings
        patch = patch_embeddings.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        if image_size % patch:
            raise TransferError(f"--image_size {image_size} is not a multiple of the patch size {patch}; "
                                f"use e.g. {image_size // patch * patch}")
        old = embeddings.position_embeddings
        current = patch_embeddings.image_size
        current = tuple(current) if isinstance(current, (tuple, list)) else (current, current)
        if current == (image_size, image_size):
            return f"{image_size} px: the native size, position embeddings unchanged"
        grid = image_size // patch
        prefix = old.shape[1] - (current[0] // patch) * (current[1] // patch)  # class (+ distillation) tokens
        probe = torch.zeros(1, grid * grid + prefix, old.shape[-1], dtype=old.dtype)
        with torch.no_grad():
            resampled = embeddings.interpolate_pos_encoding(probe, image_size, image_size).detach().clone()
        embeddings.position_embeddings = torch.nn.Parameter(resampled, requires_grad=old.requires_grad)
        patch_embeddings.image_size = (image_size, image_size)
        patch_embeddings.num_patches = grid * grid
        if hasattr(embeddings, "image_size"):
            embeddings.image_size = (image_size, image_size)
        self.model.config.image_size = image_size
        from .timm_adapters import _grid

        report = (f"{image_size} px: position embeddings resampled from grid {_grid(old.shape[1], prefix)} to "
                  f"{grid}x{grid} ({old.numel()} -> {resampled.numel()} values); other weights unchanged")
        return self._forward_check(image_size, report)


@register_adapter
class TransformersTeacherAdapter(TransformersAdapter):
    """``…ForImageClassificationWithTeacher``: inference only (no labels, no loss); trains as its sibling class."""

    family = "transformers with-teacher"
    summary = "inference-only twin-head class: trained and probed as its …ForImageClassification sibling"

    @classmethod
    def matches(cls, model) -> bool:
        return TransformersAdapter.matches(model) and type(model).__name__.endswith("WithTeacher")

    def trainable_model(self):
        import transformers

        sibling = getattr(transformers, type(self.model).__name__.removesuffix("WithTeacher"), None)
        if sibling is None:
            raise TransferError(f"{type(self.model).__name__} cannot be trained (it returns no loss) and has no "
                                "…ForImageClassification sibling; pick a trainable class")
        trainable = sibling(self.model.config)
        source = self.model.state_dict()
        target = trainable.state_dict()
        # The base model's weights carry over as they are; the class-token classifier becomes `classifier`.
        first_head = self._outside_base()[0]
        mapped = {k: source[k] if k in source else source.get(k.replace(k.split(".")[0], first_head, 1), target[k])
                  for k in target}
        trainable.load_state_dict(mapped)
        return trainable
