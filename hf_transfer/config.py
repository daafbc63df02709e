"""TransferConfig: how to transfer (what trains when, BatchNorm, re-initialization, layer-wise rates, imbalance).

Each option is declared here once, with its help: `arguments.TransferArguments` (the recipes' flags) is generated
from these fields, and a `TransferPlan` is built from the config. Fields whose metadata says ``flag=False`` come
from elsewhere (the head's learning rate and weight decay are `TrainingArguments` flags).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import TransferError

BN_POLICIES = ("frozen", "eval", "train")


def _option(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TransferConfig:
    """What the user asked for (the `TransferArguments` flags plus the head's learning rate and weight decay)."""

    strategy: str = _option("full", "full | linear_probe (head only) | partial (--freeze) | lp_ft (head for --lp_epochs, "
                                    "then all) | scratch | auto (the advisor measures and picks) | lora (peft; --help_all).")
    freeze: str = _option("none", "none | backbone | depth:K | fraction:F (the first K, or share F, of the depth groups) | "
                                  "regex:PATTERN. Frozen for the whole run.")
    bn_policy: str = _option("frozen", "frozen: BatchNorm in frozen parts keeps its statistics | eval: everywhere | "
                                       "train: none does.")
    # The head's rate. None: TrainingArguments' --learning_rate (TransferTrainer), else the family default (1e-2 for
    # BatchNorm CNNs, 1e-3 otherwise), resolved by TransferPlan.build.
    learning_rate: float | None = _option(None, "The head's learning rate (TrainingArguments' --learning_rate).",
                                          flag=False)
    weight_decay: float = _option(0.01, "TrainingArguments' --weight_decay.", flag=False)
    backbone_lr_multiplier: float = _option(0.1, "Factor on --learning_rate for every pretrained parameter.")
    layer_decay: float = _option(1.0, "Depth group i of L gets the extra factor D^(L-i) (BEiT-style); 1 = off.")
    lr_multipliers: str | None = _option(None, "'regex=factor,...' extra lr factors for matching parameter names "
                                               "(first match wins).")
    reinit: str | None = _option(None, "Re-initialize modules whose name matches this regex (trained as new, at the "
                                       "head's lr).")
    gradual_unfreeze_epochs: int = _option(0, "N > 0: head only first, then one more depth group from the top every "
                                              "N epochs.")
    lp_epochs: int = _option(0, "Head-only epochs before full fine-tuning (--strategy lp_ft).")
    # an exported linear probe gave the head its start (LP-FT hand-off)
    head_init_from: str | None = _option(None, "A pooled linear_probe.py output of this backbone: the head starts from "
                                               "it (LP-FT).")
    layer_regex: str | None = _option(None, "Regex with one (\\d+) group numbering the blocks (unknown architectures).")
    class_weighting: str = _option("none", "none (default) | balanced: class weights 1/(train images) in the loss.")
    sampler: str = _option("random", "random (default) | balanced: draw every class equally often.")
    # --strategy lora (hf_transfer.lora wraps the model; the plan trains its LoRA weights and the head's copy)
    lora_r: int = _option(8, "LoRA rank (--strategy lora).")
    lora_alpha: float = _option(16.0, "LoRA scaling alpha (the update is scaled by alpha / r).")
    lora_dropout: float = _option(0.0, "Dropout on the LoRA branch's input.")
    lora_target_modules: str | None = _option(
        None, "Modules that get LoRA: comma-separated names or name endings ('qkv', 'q_proj,v_proj') or regex:PATTERN; "
              "default per family: attention projections for ViTs, the dense layers after the stem for CNNs. --freeze "
              "keeps LoRA out of frozen layers.")
    # The LoRA weights' own rate: on the embedded default (Lite0, BatchNorm statistics frozen) LoRA diverged at the
    # head's 1e-2 (0.15 accuracy after 30 steps) and reached 0.89 at 3e-3; LoRA on ViTs usually runs at 1e-3 to 5e-3.
    lora_learning_rate: float = _option(3e-3, "Learning rate of the LoRA weights (default 3e-3; the head keeps "
                                              "--learning_rate).")

    @property
    def strategy_object(self):
        """The registered `Strategy` named by ``strategy`` (a one-line error for an unknown name)."""
        from .strategies import get_strategy

        return get_strategy(self.strategy)

    def validate(self) -> None:
        strategy = self.strategy_object
        if self.bn_policy not in BN_POLICIES:
            raise TransferError(f"--bn_policy {self.bn_policy!r} is unknown; choose one of {', '.join(BN_POLICIES)}")
        if self.gradual_unfreeze_epochs < 0:
            raise TransferError("--gradual_unfreeze_epochs must be >= 0")
        strategy.validate(self)
        if not 0 < self.layer_decay <= 1:
            raise TransferError(f"--layer_decay {self.layer_decay} must be in (0, 1]; 1 turns it off")
        if self.learning_rate is not None and self.learning_rate <= 0 or self.backbone_lr_multiplier < 0:
            raise TransferError(f"--learning_rate {self.learning_rate:g} / --backbone_lr_multiplier {self.backbone_lr_multiplier:g}: "
                                "the learning rate must be > 0 and the multiplier >= 0")
        from .imbalance import CLASS_WEIGHTINGS, SAMPLERS

        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise TransferError(f"--class_weighting {self.class_weighting!r} is unknown; choose {' or '.join(CLASS_WEIGHTINGS)}")
        if self.sampler not in SAMPLERS:
            raise TransferError(f"--sampler {self.sampler!r} is unknown; choose {' or '.join(SAMPLERS)}")
        if self.class_weighting == "balanced" and self.sampler == "balanced":
            raise TransferError("--class_weighting balanced and --sampler balanced both correct for imbalance (together "
                                "rare classes count ~(n_max/n_min)^2 times more); pick one")

    def first_body_epoch(self) -> int:
        """The epoch from which the first pretrained layers (or LoRA weights) train (the head trains from epoch 0)."""
        return self.strategy_object.head_only_epochs(self) or self.gradual_unfreeze_epochs

    def check_run_length(self, total_epochs: float, run_note: str = "") -> None:
        """Refuse an LP-FT split or gradual unfreezing that would start the body only after the run ends.

        Epoch e runs when e < ceil(total_epochs) (a fractional last epoch still runs). Such a run would silently be
        a linear probe.
        """
        first = self.first_body_epoch()
        if not self.strategy_object.trains_pretrained_layers or first < math.ceil(total_epochs - 1e-9):
            return
        why = (f"--strategy {self.strategy} trains the head alone for --lp_epochs {self.lp_epochs} epoch(s)" if self.lp_epochs
               else f"--gradual_unfreeze_epochs {self.gradual_unfreeze_epochs} unfreezes the first body group at epoch {first}")
        raise TransferError(f"{why}, but the run has {total_epochs:g} epoch(s){run_note}: the pretrained layers would "
                            f"never train; raise --num_train_epochs above {first}, or use --strategy linear_probe for a "
                            "head-only run")
