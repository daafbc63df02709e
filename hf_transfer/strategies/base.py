"""The `Strategy` base class and the registry every strategy joins (one file per strategy in this package).

A strategy says what the pretrained model does in a run: which parameters it freezes and from which epoch the
body trains (given the layer map and the config), what it checks in the config, which engine features it needs,
how it describes itself in the plan table and the model card, whether it loads pretrained weights, and how the
trained model is written. Everything outside this package asks the strategy object; no code compares names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import TransferError

REGISTRY: dict[str, type["Strategy"]] = {}


def register(cls: type["Strategy"]) -> type["Strategy"]:
    """Class decorator: make ``cls`` available as ``--strategy <cls.name>``."""
    REGISTRY[cls.name] = cls
    return cls


def get_strategy(name: str) -> "Strategy":
    """The strategy registered as ``name``; an unknown name is a one-line error listing the plan strategies."""
    if name not in REGISTRY or not REGISTRY[name].builds_plan:
        known = ", ".join(n for n, cls in REGISTRY.items() if cls.builds_plan)
        raise TransferError(f"--strategy {name!r} is unknown; choose one of {known}")
    return REGISTRY[name]()


def needs_advisor(name: str) -> bool:
    """Whether ``name`` is resolved into another strategy by the advisor before any plan (auto)."""
    return name in REGISTRY and not REGISTRY[name].builds_plan


def strategy_names(plan_only: bool = True) -> tuple[str, ...]:
    return tuple(n for n, cls in REGISTRY.items() if cls.builds_plan or not plan_only)


@dataclass
class ParamRoles:
    """The parameter names a strategy gives each role in the plan."""

    new: set[str]  # not pretrained (head, re-initialized modules, everything for scratch): trained at the head's rate
    frozen: set[str]  # never train
    adapters: set[str]  # LoRA weights: their own rate
    originals: set[str]  # peft's frozen original of the head (the trained copy is in modules_to_save)


class Strategy:
    name: ClassVar[str]
    summary: ClassVar[str] = ""
    builds_plan: ClassVar[bool] = True  # False: resolved into another strategy before any plan (auto)
    head_only_phase: ClassVar[bool] = False  # --lp_epochs: the head trains alone first, then the body
    trains_pretrained_layers: ClassVar[bool] = True  # False: no pretrained layer ever trains (probe, scratch)
    loads_pretrained: ClassVar[bool] = True
    trains_adapters: ClassVar[bool] = False  # LoRA: new weights beside frozen pretrained ones
    freezes_body: ClassVar[bool] = False  # the strategy itself freezes layers (beyond any --freeze rule)
    allows_gradual_unfreeze: ClassVar[bool] = True
    decision_flags: ClassVar[tuple[str, ...]] = ()  # the advisor's decision fields this strategy reads (freeze, lp_epochs)

    # ---------------------------------------------------------------------------------------------- checks
    def validate(self, config) -> None:
        """Refuse, in one line, flags this strategy cannot honour (before anything loads)."""
        if config.lp_epochs and not self.head_only_phase:
            raise TransferError("--lp_epochs only applies to --strategy lp_ft (or lora); add --strategy lp_ft or drop it")
        if config.gradual_unfreeze_epochs and (self.head_only_phase and config.lp_epochs or not self.allows_gradual_unfreeze):
            raise TransferError(f"--gradual_unfreeze_epochs cannot be combined with --strategy {self.name}"
                                f"{' --lp_epochs' if self.trains_adapters else ''}; pick one schedule")
        if config.lora_target_modules and not self.trains_adapters:
            raise TransferError("--lora_target_modules only applies to --strategy lora; add --strategy lora or drop it")

    def with_random_weights(self) -> "Strategy":
        """The strategy to run when --no_pretrained gives random weights (most stay as they are)."""
        return self

    # ------------------------------------------------------------------------------------------------ plan
    def head_only_epochs(self, config) -> int:
        """Epochs the head trains alone before the body (0: none)."""
        return config.lp_epochs if self.head_only_phase else 0

    def param_roles(self, config, names: list[str], layer_map, frozen: set[str], new: set[str]) -> ParamRoles:
        """Roles given the --freeze rule's ``frozen`` set and the ``new`` parameters (head, re-initialized)."""
        if frozen and not frozen - new:
            raise TransferError(f"--freeze {config.freeze!r} only matches new (head or re-initialized) parameters, which "
                                "always train; point it at pretrained layers")
        return ParamRoles(new, frozen - new, set(), set())

    def engine_features(self, config) -> list[str]:
        """The plan features of `engines.FEATURES` this run needs (known before the model loads)."""
        used = ["layer_rates", "bn_policy"]  # every plan has groups (head vs. pretrained) and a BatchNorm policy
        if config.freeze not in (None, "", "none") or self.freezes_body:
            used.append("freeze")
        if self.head_only_epochs(config) > 0 or config.gradual_unfreeze_epochs > 0:
            used.append("unfreeze")
        return used

    def flag_for(self, feature: str, config) -> str:
        """The flag that asked for ``feature``, for an engine's refusal line."""
        if feature == "unfreeze":
            return f"--strategy {self.name}" if self.head_only_epochs(config) else "--gradual_unfreeze_epochs"
        return feature

    # ------------------------------------------------------------------------------------------- reporting
    def describe(self, config) -> str:
        """The plan table's rate settings (after strategy, freeze and BatchNorm policy)."""
        return f"backbone_x{config.backbone_lr_multiplier:g}"

    def card_rates(self, config: dict) -> str:
        """The model card's words for the learning rates (``config``: the saved plan's config)."""
        return f"pretrained layers x{config['backbone_lr_multiplier']:g}"

    # ------------------------------------------------------------------------------------- model and output
    def prepare_model(self, model, config, source: str | None = None):
        """The model the plan is built from (LoRA wraps it with peft)."""
        return model

    def save_model(self, trained, folder, *, image_size, weights, source: str | None = None, adapter_only: bool = False):
        """Write the trained model into ``folder`` (timm's layout, so timm loads the folder too)."""
        from ..saving import save_model_folder

        save_model_folder(trained, folder, image_size=image_size, timm_layout=True, state_dict=weights)
