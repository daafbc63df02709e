"""--strategy lora: peft LoRA weights in the pretrained layers plus the head train; every pretrained weight is frozen.

Its settings are the ``lora_*`` fields of `TransferConfig` (rank, alpha, dropout, target modules, the LoRA weights'
own learning rate); `hf_transfer.lora` chooses the layers, wraps the model and writes adapter + merged model.
"""

from __future__ import annotations

import importlib.util

from ..errors import TransferError
from .base import ParamRoles, Strategy, register


@register
class Lora(Strategy):
    name = "lora"
    summary = "peft LoRA weights in the pretrained layers and the head train; the pretrained weights stay frozen"
    head_only_phase = True  # --lp_epochs: the head alone first, then the LoRA weights
    trains_adapters = True
    freezes_body = True

    def validate(self, config) -> None:
        """LoRA's flags, and what does not combine with it (all before anything is loaded)."""
        super().validate(config)
        if importlib.util.find_spec("peft") is None:
            raise TransferError('--strategy lora needs peft, which is not installed; pip install -e ".[peft]" (or pip install peft)')
        if config.lora_learning_rate <= 0:
            raise TransferError("--lora_learning_rate must be > 0")
        if config.lora_r < 1 or config.lora_alpha <= 0 or not 0 <= config.lora_dropout < 1:
            raise TransferError(f"--lora_r {config.lora_r}, --lora_alpha {config.lora_alpha:g}, --lora_dropout "
                                f"{config.lora_dropout:g}: the rank must be >= 1, alpha > 0 and the dropout in [0, 1)")
        if (config.freeze or "").strip() == "backbone":
            raise TransferError("--freeze backbone leaves no layer for LoRA; use --strategy linear_probe, or --freeze "
                                "depth:K / fraction:F to keep LoRA out of the first layers")
        if config.bn_policy == "train":
            raise TransferError("--bn_policy train cannot be combined with --strategy lora: BatchNorm statistics are not "
                                "part of the adapter, so a reloaded adapter would predict differently; use frozen or eval")
        if config.reinit:
            raise TransferError("--reinit cannot be combined with --strategy lora (LoRA adapts pretrained layers; "
                                "re-initialized ones would have to train in full); drop one of them")

    def with_random_weights(self) -> Strategy:
        raise TransferError("--strategy lora adapts pretrained weights, but --no_pretrained gives random ones; drop "
                            "--no_pretrained, or train from scratch with --strategy scratch")

    def param_roles(self, config, names, layer_map, frozen, new) -> ParamRoles:
        """(LoRA weights, new = the head's trained copy, frozen = everything else) of a peft-wrapped model.

        peft keeps the head twice: ``modules_to_save.default`` trains, ``original_module`` stays as loaded. A head
        outside ``modules_to_save`` would be frozen at random and lost from the saved adapter (peft issues #310, #577):
        refused. LoRA weights in depth groups the --freeze rule freezes stay frozen too.
        """
        from ..backbones.peft_adapter import is_lora_param, is_original_copy_param, is_saved_copy_param

        adapters = {n for n in names if is_lora_param(n)}
        saved = {n for n in names if is_saved_copy_param(n)}
        if not adapters:
            raise TransferError("--strategy lora: the model has no LoRA layers; wrap it with hf_transfer.lora.wrap_with_lora "
                                "(or peft.get_peft_model) before building the plan")
        lost = [n for n in layer_map.head.param_names if n not in saved and not is_original_copy_param(n)]
        if lost:
            raise TransferError(f"the head ({lost[0]}) is not in peft's modules_to_save: it would not train and a saved "
                                "adapter would lose it; wrap with hf_transfer.lora.wrap_with_lora, or add the head to "
                                "modules_to_save")
        all_frozen = set(names) - saved - (adapters - frozen)
        return ParamRoles(saved, all_frozen - saved, adapters - frozen, all_frozen & set(layer_map.head.param_names))

    def engine_features(self, config) -> list[str]:
        return super().engine_features(config) + ["lora"]

    def flag_for(self, feature: str, config) -> str:
        return "--strategy lora" if feature == "lora" else super().flag_for(feature, config)

    def describe(self, config) -> str:
        return (f"lora_lr={config.lora_learning_rate:g} lora_r={config.lora_r} lora_alpha={config.lora_alpha:g} "
                f"lora_dropout={config.lora_dropout:g}")

    def card_rates(self, config: dict) -> str:
        return (f"LoRA rank {config.get('lora_r')}, alpha {config.get('lora_alpha'):g}, LoRA learning rate "
                f"{config.get('lora_learning_rate', config['learning_rate']):g} (pretrained weights frozen)")

    def prepare_model(self, model, config, source=None):
        from ..lora import wrap_with_lora

        return wrap_with_lora(model, config, source=source)

    def save_model(self, trained, folder, *, image_size, weights, source=None, adapter_only=False):
        from ..lora import save_lora_output  # adapter/ + the merged model

        save_lora_output(trained, folder, image_size=image_size, merge=not adapter_only, source=source)
