"""A backbone wrapped by peft (LoRA): the wrapped model's adapter speaks peft's parameter names.

peft renames what it touches: ``timm_model.blocks.3.0.conv_pw.weight`` becomes
``base_model.model.timm_model.blocks.3.0.conv_pw.base_layer.weight`` beside the new ``….lora_A.default.weight`` and
``….lora_B.default.weight``, and a head in ``modules_to_save`` is held twice (``….original_module.*``, frozen, and
``….modules_to_save.default.*``, trained). `PeftAdapter` maps every such name back to the backbone's own parameter
(`base_param_name`), so the layer map, the plan and its table place LoRA weights in their depth group and the head's
copy in the head. Everything else (preprocessing, input size, forward) is the wrapped backbone's adapter.
"""

from __future__ import annotations

import re

import torch

from ..errors import TransferError
from ..layers import DepthGroup, LayerMap
from .adapter import BackboneAdapter, adapter_for, register_adapter

PEFT_PREFIX = "base_model.model."
# lora_A / lora_B (Linear, Conv), lora_embedding_A / _B (Embedding), lora_magnitude_vector (DoRA); adapter "default"
LORA_PARAM = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)\.[^.]+(\.[^.]+)?$")
SAVED_COPY = ".modules_to_save."  # the trained copy of a module in modules_to_save
ORIGINAL_COPY = ".original_module."  # its frozen original, kept by peft to disable the adapter


def is_peft_model(model) -> bool:
    """A peft ``PeftModel`` (checked without importing peft, which is optional)."""
    return type(model).__module__.startswith("peft.") and hasattr(model, "peft_config") and hasattr(model, "base_model")


def is_lora_param(name: str) -> bool:
    return bool(LORA_PARAM.search(name))


def is_saved_copy_param(name: str) -> bool:
    return SAVED_COPY in name


def is_original_copy_param(name: str) -> bool:
    return ORIGINAL_COPY in name


def base_param_name(name: str) -> str:
    """The backbone parameter a peft parameter stands for (its own name when peft did not touch it).

    A LoRA weight stands for the module's ``weight``: that is where the layer map placed the module.
    """
    name = name.removeprefix(PEFT_PREFIX)
    name = LORA_PARAM.sub(".weight", name)
    name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)
    return name.replace(ORIGINAL_COPY, ".").replace(".base_layer.", ".")


@register_adapter
class PeftAdapter(BackboneAdapter):
    """A peft-wrapped backbone: the backbone's adapter, with the layer map in peft's parameter names."""

    family = "peft"
    summary = "a peft (LoRA) wrapper: the wrapped backbone's adapter, names mapped through base_model.model."

    def __init__(self, model, image_processor=None):
        super().__init__(model, image_processor)
        self.base_model = model.get_base_model()
        self.base = adapter_for(self.base_model)  # made before wrapping by hf_transfer.lora: its layer map is clean

    @classmethod
    def matches(cls, model) -> bool:
        return is_peft_model(model)

    @property
    def note(self) -> str | None:
        return self.base.note

    # ------------------------------------------------------------------------------------------- structure
    def head_roots(self) -> list[str]:
        return [PEFT_PREFIX + name for name in self.base.head_roots()]

    def head_params(self) -> list[str]:
        return list(self.layer_map().head.param_names)

    def run(self, pixel_values):
        return self.base.run(pixel_values)  # the base model runs with the LoRA layers injected into it

    def _build_layer_map(self, layer_regex: str | None) -> LayerMap:
        base_map = self.base.layer_map(layer_regex)
        depth_of = {base_param_name(n): g.index for g in base_map.groups for n in g.param_names}
        placed: dict[int, list[str]] = {g.index: [] for g in base_map.groups}
        for name, _ in self.model.named_parameters():
            depth = depth_of.get(base_param_name(name))
            if depth is None:
                raise TransferError(f"cannot place the peft parameter {name!r} in the layer map of "
                                    f"{type(self.base_model).__name__}; wrap the model with hf_transfer.lora.wrap_with_lora")
            placed[depth].append(name)
        modules = dict(self.model.named_modules())

        def mapped(module: str | None) -> str | None:
            return None if module is None else PEFT_PREFIX + module if PEFT_PREFIX + module in modules else None

        groups = [DepthGroup(g.index, g.name, placed[g.index],
                             [m for m in map(mapped, g.module_names) if m], g.is_head, mapped(g.output_module))
                  for g in base_map.groups]
        return LayerMap(groups, base_map.source)

    def classifier_linears(self) -> list[tuple[str, torch.nn.Linear]]:
        raise TransferError("write a probe head into the backbone before wrapping it with LoRA (merge_and_unload() first)")

    # ------------------------------------------------------------------------------- the wrapped backbone's
    def lora_targets(self) -> tuple[list[str], str]:
        raise TransferError("the model is already wrapped by peft; pass the backbone itself to hf_transfer.lora")

    def feature_layout(self, module) -> bool:
        return self.base.feature_layout(module)

    @property
    def nhwc_default(self) -> bool:
        return self.base.nhwc_default

    def change_input_size(self, image_size: int) -> str:
        return self.base.change_input_size(image_size)

    def check_forward(self, image_size: int) -> None:
        self.base.check_forward(image_size)

    def total_stride(self) -> int | None:
        return self.base.total_stride()

    def data_config(self) -> dict:
        return self.base.data_config()

    def set_preprocessing(self, image_size: int | None) -> None:
        self.base.set_preprocessing(image_size)

    def image_processor(self, image_size: int | None = None):
        return self.base.image_processor(image_size)

    def config_preprocessing(self) -> dict:
        return self.base.config_preprocessing()

    def native_state_dict(self) -> dict | None:
        raise TransferError("a LoRA model is saved as its adapter and merged model (hf_transfer.lora.save_lora_output), "
                            "not through save_model_folder")

    def prefers_channels_last(self) -> bool:
        return self.base.prefers_channels_last()
