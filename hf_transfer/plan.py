"""TransferPlan: the single source of truth for what trains, when, and at which learning rate.

A plan is built once from a `TransferConfig` and a model's `LayerMap`. It decides

* which parameters are frozen for the whole run and from which epoch the others train (freeze rules,
  linear probing, LP-FT, gradual unfreezing): each parameter gets a *start epoch* or ``None`` (never trains);
* the BatchNorm policy (``frozen`` | ``eval`` | ``train``);
* which modules are re-initialized (they then count as new, like the head);
* the parameter groups of the optimizer: (depth, new/pretrained, decay/no-decay, lr, start epoch), each with its
  final ``lr`` and ``weight_decay`` written out, so every HF scheduler scales the real values.

Everything that freezes a parameter, switches a BatchNorm to eval or sets a learning rate reads the plan;
`TransferTrainer` (trainer.py) applies it. The plan is printed as a table and saved as ``transfer_plan.json``.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import TransferError
from .backbones import build_layer_map
from .layers import LayerMap

STRATEGIES = ("full", "linear_probe", "partial", "lp_ft", "scratch", "lora")
BN_POLICIES = ("frozen", "eval", "train")
PLAN_FILE = "transfer_plan.json"
PLAN_VERSION = 1

# Parameters that are not weights of a linear map: decaying them pulls tokens / positions toward zero.
NO_DECAY_NAME = re.compile(r"(^|\.|_)(pos_embed|position_embeddings|cls_token|dist_token|reg_token|mask_token|"
                           r"relative_position_bias_table|absolute_pos_embed)($|\.)")
RESETTABLE = (torch.nn.Linear, torch.nn.modules.conv._ConvNd, torch.nn.modules.batchnorm._BatchNorm,
              torch.nn.LayerNorm, torch.nn.GroupNorm)


def default_learning_rate(model: torch.nn.Module) -> float:
    """The head's learning rate when none is given; the pretrained body trains at x backbone_lr_multiplier (0.1).

    BatchNorm CNNs (EfficientNet, ResNet, MobileNet) fine-tune well at 1e-2 / 1e-3: on the embedded default
    (Lite0, MNIST-5k, one epoch) 1e-2 / 1e-3 gave 0.988 accuracy against 0.922 at 1e-3 / 1e-4. Transformers and
    LayerNorm ConvNeXts diverge at such rates and get 1e-3 / 1e-4.
    """
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return 1e-2 if has_batchnorm else 1e-3


@dataclass
class TransferConfig:
    """What the user asked for (the `TransferArguments` flags plus the head's learning rate and weight decay)."""

    strategy: str = "full"
    freeze: str = "none"
    bn_policy: str = "frozen"
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    backbone_lr_multiplier: float = 0.1
    layer_decay: float = 1.0
    lr_multipliers: str | None = None
    reinit: str | None = None
    gradual_unfreeze_epochs: int = 0
    lp_epochs: int = 0
    head_init_from: str | None = None  # an exported linear probe gave the head its start (LP-FT hand-off)
    layer_regex: str | None = None
    class_weighting: str = "none"  # imbalance.py: loss weights from train class counts (none | balanced)
    sampler: str = "random"  # imbalance.py: training order (random | balanced draws with replacement)
    # --strategy lora (hf_transfer.lora wraps the model; the plan trains its LoRA weights and the head's copy)
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: str | None = None
    # The LoRA weights' own rate: on the embedded default (Lite0, BatchNorm statistics frozen) LoRA diverged at the
    # head's 1e-2 (0.15 accuracy after 30 steps) and reached 0.89 at 3e-3; LoRA on ViTs usually runs at 1e-3 to 5e-3.
    lora_learning_rate: float = 3e-3

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise TransferError(f"--strategy {self.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
        if self.bn_policy not in BN_POLICIES:
            raise TransferError(f"--bn_policy {self.bn_policy!r} is unknown; choose one of {', '.join(BN_POLICIES)}")
        if self.strategy == "partial" and self.freeze in ("none", "", None):
            raise TransferError("--strategy partial needs a --freeze rule; pass e.g. --freeze fraction:0.5")
        if self.strategy == "lp_ft" and self.lp_epochs < 1 and not self.head_init_from:
            raise TransferError("--strategy lp_ft needs --lp_epochs N (N >= 1 head-only epochs) or a probe's head "
                                "(--head_init_from DIR, from recipes/linear_probe.py)")
        if self.lp_epochs and self.strategy not in ("lp_ft", "lora"):
            raise TransferError("--lp_epochs only applies to --strategy lp_ft (or lora); add --strategy lp_ft or drop it")
        if self.gradual_unfreeze_epochs < 0:
            raise TransferError("--gradual_unfreeze_epochs must be >= 0")
        if self.gradual_unfreeze_epochs and (self.strategy in ("linear_probe", "lp_ft") or self.lp_epochs):
            raise TransferError(f"--gradual_unfreeze_epochs cannot be combined with --strategy {self.strategy}"
                                f"{' --lp_epochs' if self.strategy == 'lora' else ''}; pick one schedule")
        self._validate_lora()
        if not 0 < self.layer_decay <= 1:
            raise TransferError(f"--layer_decay {self.layer_decay} must be in (0, 1]; 1 turns it off")
        if self.backbone_lr_multiplier < 0 or self.learning_rate <= 0:
            raise TransferError(f"--learning_rate {self.learning_rate:g} / --backbone_lr_multiplier {self.backbone_lr_multiplier:g}: the learning rate must be > 0 and the multiplier >= 0")
        from .imbalance import CLASS_WEIGHTINGS, SAMPLERS

        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise TransferError(f"--class_weighting {self.class_weighting!r} is unknown; choose {' or '.join(CLASS_WEIGHTINGS)}")
        if self.sampler not in SAMPLERS:
            raise TransferError(f"--sampler {self.sampler!r} is unknown; choose {' or '.join(SAMPLERS)}")
        if self.class_weighting == "balanced" and self.sampler == "balanced":
            raise TransferError("--class_weighting balanced and --sampler balanced both correct for imbalance (together "
                                "rare classes count ~(n_max/n_min)^2 times more); pick one")


    def _validate_lora(self) -> None:
        """LoRA's flags, and what does not combine with it (all before anything is loaded)."""
        if self.strategy != "lora":
            if self.lora_target_modules:
                raise TransferError("--lora_target_modules only applies to --strategy lora; add --strategy lora or drop it")
            return
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            raise TransferError('--strategy lora needs peft, which is not installed; pip install -e ".[peft]" (or pip install peft)')
        if self.lora_learning_rate <= 0:
            raise TransferError("--lora_learning_rate must be > 0")
        if self.lora_r < 1 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise TransferError(f"--lora_r {self.lora_r}, --lora_alpha {self.lora_alpha:g}, --lora_dropout "
                                f"{self.lora_dropout:g}: the rank must be >= 1, alpha > 0 and the dropout in [0, 1)")
        if (self.freeze or "").strip() == "backbone":
            raise TransferError("--freeze backbone leaves no layer for LoRA; use --strategy linear_probe, or --freeze "
                                "depth:K / fraction:F to keep LoRA out of the first layers")
        if self.bn_policy == "train":
            raise TransferError("--bn_policy train cannot be combined with --strategy lora: BatchNorm statistics are not "
                                "part of the adapter, so a reloaded adapter would predict differently; use frozen or eval")
        if self.reinit:
            raise TransferError("--reinit cannot be combined with --strategy lora (LoRA adapts pretrained layers; "
                                "re-initialized ones would have to train in full); drop one of them")

    def first_body_epoch(self) -> int:
        """The epoch from which the first pretrained layers (or LoRA weights) train (the head trains from epoch 0)."""
        return self.lp_epochs if self.strategy in ("lp_ft", "lora") and self.lp_epochs else self.gradual_unfreeze_epochs

    def check_run_length(self, total_epochs: float, run_note: str = "") -> None:
        """Refuse an LP-FT split or gradual unfreezing that would start the body only after the run ends.

        Epoch e runs when e < ceil(total_epochs) (a fractional last epoch still runs). Such a run would silently be
        a linear probe.
        """
        first = self.first_body_epoch()
        if self.strategy in ("linear_probe", "scratch") or first < math.ceil(total_epochs - 1e-9):
            return
        why = (f"--strategy {self.strategy} trains the head alone for --lp_epochs {self.lp_epochs} epoch(s)" if self.lp_epochs
               else f"--gradual_unfreeze_epochs {self.gradual_unfreeze_epochs} unfreezes the first body group at epoch {first}")
        raise TransferError(f"{why}, but the run has {total_epochs:g} epoch(s){run_note}: the pretrained layers would "
                            f"never train; raise --num_train_epochs above {first}, or use --strategy linear_probe for a "
                            "head-only run")


@dataclass
class ParamGroup:
    """One optimizer parameter group: parameters that share depth, lr, weight decay and start epoch."""

    name: str
    depth: int
    lr: float
    weight_decay: float
    trains_from_epoch: int | None  # None: frozen for the whole run (not in the optimizer)
    new: bool  # head or re-initialized: not pretrained
    params: list[str] = field(default_factory=list)

    @property
    def frozen(self) -> bool:
        return self.trains_from_epoch is None


ITEM_SEPARATOR = re.compile(r",(?![^{]*\})")


def parse_lr_multipliers(text: str | None) -> list[tuple[re.Pattern, float]]:
    """'blocks\\.0=0.5,head=2' -> [(re, 0.5), (re, 2.0)]; each item splits at its last '='.

    Items are separated by commas outside braces, so quantifiers such as ``blocks\\.[0-9]{1,2}`` stay whole.
    """
    rules = []
    for item in filter(None, (part.strip() for part in ITEM_SEPARATOR.split(text or ""))):
        pattern, sep, factor = item.rpartition("=")
        try:
            if not sep or not pattern:
                raise ValueError
            rules.append((re.compile(pattern), float(factor)))
        except (ValueError, re.error):
            raise TransferError(f"--lr_multipliers item {item!r} is not 'regex=factor'; write e.g. 'blocks\\.0=0.5,classifier=2'") from None
    return rules


def _frozen_by_rule(rule: str, layer_map: LayerMap, names: list[str]) -> set[str]:
    """Parameter names a --freeze rule freezes for the whole run."""
    rule = (rule or "none").strip()
    body_depths = [g.index for g in layer_map.body]
    if rule == "none":
        return set()
    if rule == "backbone":
        return set(layer_map.param_names(body_depths))
    kind, _, value = rule.partition(":")
    if kind == "depth":
        try:
            k = int(value)
        except ValueError:
            k = -1
        if not 0 < k <= len(body_depths):
            raise TransferError(f"--freeze {rule!r}: K must be an integer in 1..{len(body_depths)} (the body has {len(body_depths)} depth groups)")
        return set(layer_map.param_names(body_depths[:k]))
    if kind == "fraction":
        try:
            f = float(value)
        except ValueError:
            f = -1.0
        if not 0 < f <= 1:
            raise TransferError(f"--freeze {rule!r}: F must be a number in (0, 1], e.g. fraction:0.5")
        k = int(math.floor(f * len(body_depths) + 1e-9))
        if k == 0:
            raise TransferError(f"--freeze {rule!r} freezes no depth group ({len(body_depths)} in the body); raise F")
        return set(layer_map.param_names(body_depths[:k]))
    if kind == "regex":
        try:
            pattern = re.compile(value)
        except re.error as err:
            raise TransferError(f"--freeze {rule!r}: invalid regular expression ({err})") from None
        matched = {n for n in names if pattern.search(n)}
        if not matched:
            raise TransferError(f"--freeze {rule!r} matches no parameter; check the names with build_layer_map(model).table()")
        return matched
    raise TransferError(f"--freeze {rule!r} is unknown; use none, backbone, depth:K, fraction:F or regex:PATTERN")


def _reinit_modules(model: torch.nn.Module, pattern: str | None) -> list[str]:
    """The highest resettable modules whose name matches --reinit."""
    if not pattern:
        return []
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise TransferError(f"--reinit {pattern!r}: invalid regular expression ({err})") from None
    chosen: list[str] = []
    for name, module in model.named_modules():
        if name and regex.search(name) and not any(name.startswith(c + ".") for c in chosen):
            if any(isinstance(m, RESETTABLE) for m in module.modules()):
                chosen.append(name)
    if not chosen:
        raise TransferError(f"--reinit {pattern!r} matches no Linear/Conv/Norm module; check the names with model.named_modules()")
    return chosen


def _no_decay_names(model: torch.nn.Module) -> set[str]:
    """Biases, every normalization weight (BatchNorm too) and position/class tokens: no weight decay."""
    names = {n for n, p in model.named_parameters() if p.ndim <= 1 or NO_DECAY_NAME.search(n)}
    for prefix, module in model.named_modules():  # timm declares its own no-decay names (pos_embed, cls_token, ...)
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared) and isinstance(module, torch.nn.Module):
            try:
                for short in declared():
                    names.update(n for n, _ in model.named_parameters()
                                 if n == f"{prefix}.{short}" or n.startswith(f"{prefix}.{short}.") or (not prefix and n == short))
            except TypeError:
                pass
    return names


@dataclass
class TransferPlan:
    config: TransferConfig
    groups: list[ParamGroup]
    depth_names: list[str]
    reinit_modules: list[str] = field(default_factory=list)
    layer_map_source: str = ""
    # Values per parameter, for reporting the frozen share (not saved: a loaded plan reports groups only).
    sizes: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    # ----------------------------------------------------------------------------------------------- build
    @classmethod
    def build(cls, model: torch.nn.Module, config: TransferConfig, layer_map: LayerMap | None = None) -> "TransferPlan":
        config.validate()
        layer_map = layer_map or build_layer_map(model, config.layer_regex)
        names = [n for n, _ in model.named_parameters()]
        head = layer_map.head.index  # L in D^(L - i)
        reinit = _reinit_modules(model, config.reinit)
        new = set(layer_map.head.param_names) | {n for n in names if any(n.startswith(m + ".") for m in reinit)}
        if config.strategy == "scratch":
            new = set(names)  # random init: nothing is pretrained
        frozen = _frozen_by_rule(config.freeze, layer_map, names)
        if config.strategy == "linear_probe":
            frozen |= set(layer_map.param_names([g.index for g in layer_map.body]))
        adapters: set[str] = set()
        originals: set[str] = set()  # peft's frozen original of the head (the trained copy is in modules_to_save)
        if config.strategy == "lora":
            adapters, new, frozen = _lora_sets(names, layer_map, frozen)
            originals = frozen & set(layer_map.head.param_names)
        elif frozen and not frozen - new:
            raise TransferError(f"--freeze {config.freeze!r} only matches new (head or re-initialized) parameters, which always "
                                "train; point it at pretrained layers")
        frozen -= new  # new modules always train: frozen random weights help nobody

        start = _start_epochs(config, layer_map, frozen, new)
        rules = parse_lr_multipliers(config.lr_multipliers)
        for pattern, _ in rules:
            if not any(pattern.search(n) for n in names):
                raise TransferError(f"--lr_multipliers rule {pattern.pattern!r} matches no parameter; check the names")
        no_decay = _no_decay_names(model)

        grouped: dict[tuple, ParamGroup] = {}
        for n in names:
            depth = layer_map.depth_of(n)
            is_new = n in new
            lr = config.learning_rate
            if n in adapters:  # their own rate (not the head's, not x backbone_lr_multiplier), layer decay by depth
                lr = config.lora_learning_rate * config.layer_decay ** (head - depth)
            elif not is_new:
                lr *= config.backbone_lr_multiplier * config.layer_decay ** (head - depth)
            override = next(((pattern, factor) for pattern, factor in rules if pattern.search(n)), None)
            if override:  # the first matching rule wins
                lr *= override[1]
            wd = 0.0 if n in no_decay else config.weight_decay
            key = (depth, is_new, wd == 0.0, lr, start[n], n in adapters, n in originals)
            if key not in grouped:
                label = (layer_map.groups[depth].name + ("/new" if is_new and depth != head else "")
                         + ("/lora" if n in adapters else "/original" if n in originals else "")
                         + ("/no_decay" if wd == 0.0 else ""))
                if override:
                    label += f"/x{override[1]:g}"
                grouped[key] = ParamGroup(label, depth, lr, wd, start[n], is_new)
            grouped[key].params.append(n)
        groups = sorted(grouped.values(), key=lambda g: (g.depth, g.new, g.weight_decay == 0.0, g.lr))
        sizes = {n: p.numel() for n, p in model.named_parameters()}
        return cls(config, groups, [g.name for g in layer_map.groups], reinit, layer_map.source, sizes)

    # --------------------------------------------------------------------------------------------- queries
    def check_schedule(self, total_epochs: float, run_note: str = "") -> str | None:
        """`TransferConfig.check_run_length`, then a line naming the depth groups that gradual unfreezing does not
        reach in this run (normal for short ULMFiT-style runs; None when every group trains)."""
        pretrained = [g for g in self.groups if not g.frozen and not g.new]
        if not pretrained:
            return None
        self.config.check_run_length(total_epochs, run_note)
        late = [g for g in pretrained if g.trains_from_epoch >= math.ceil(total_epochs - 1e-9)]
        if not late:
            return None
        depths = sorted({g.depth for g in late})
        return (f"gradual unfreezing reaches depth {depths[-1] + 1} and up within {total_epochs:g} epoch(s){run_note}; "
                f"depth groups {depths[0]}-{depths[-1]} stay frozen ({max(g.trains_from_epoch for g in late) + 1} "
                f"epochs would unfreeze all)")

    @property
    def ever_trained(self) -> set[str]:
        return {n for g in self.groups if not g.frozen for n in g.params}

    def trainable_at(self, epoch: int) -> set[str]:
        return {n for g in self.groups if not g.frozen and g.trains_from_epoch <= epoch for n in g.params}

    def change_epochs(self) -> list[int]:
        return sorted({g.trains_from_epoch for g in self.groups if not g.frozen})

    def frozen_share(self) -> str:
        """One line: how many depth groups and how much of the weights never train. The two differ a lot: half the
        depth groups of a ResNet-18 hold 3.5% of its weights (the late stages are the big ones)."""
        frozen = {n for g in self.groups if g.frozen for n in g.params}
        depths = sorted({g.depth for g in self.groups})
        frozen_depths = [d for d in depths if all(g.frozen for g in self.groups if g.depth == d)]
        line = f"frozen for the whole run: {len(frozen_depths)} of {len(depths)} depth groups"
        if self.sizes:
            total = sum(self.sizes.values())
            held = sum(self.sizes.get(n, 0) for n in frozen)
            line += f", {100 * held / max(1, total):.1f}% of the parameters ({held / 1e6:.3f}M of {total / 1e6:.3f}M values)"
        return line

    def trainable_share(self) -> str:
        """One line for LoRA runs: what trains (LoRA weights, the head's copy), against the backbone's size."""
        from .backbones.peft_adapter import is_lora_param, is_saved_copy_param

        trained = self.ever_trained
        lora = sum(self.sizes.get(n, 0) for n in trained if is_lora_param(n))
        head = sum(self.sizes.get(n, 0) for n in trained if not is_lora_param(n))
        modules = len({n.rpartition(".lora_")[0] for n in trained if is_lora_param(n)})
        backbone = sum(v for n, v in self.sizes.items() if not is_lora_param(n) and not is_saved_copy_param(n))
        return (f"trainable: {lora + head:,} values, {100 * (lora + head) / max(1, backbone):.2f}% of the model's "
                f"{backbone / 1e6:.3f}M (LoRA {lora:,} in {modules} modules, head {head:,}); the rest is frozen")

    # --------------------------------------------------------------------------------------------- apply
    def reinitialize(self, model: torch.nn.Module) -> None:
        """reset_parameters() on every --reinit module (call once, on a freshly loaded model)."""
        modules = dict(model.named_modules())
        for name in self.reinit_modules:
            for sub in modules[name].modules():
                if isinstance(sub, RESETTABLE) and hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()

    def apply_freeze(self, model: torch.nn.Module, epoch: int | None) -> set[str]:
        """requires_grad for the phase at ``epoch``; ``None`` means 'every parameter that ever trains' (for DDP wrap)."""
        trainable = self.ever_trained if epoch is None else self.trainable_at(epoch)
        for n, p in plan_named_parameters(model):
            p.requires_grad_(n in trainable)
        return trainable

    def frozen_batchnorm(self, model: torch.nn.Module, epoch: int) -> list[torch.nn.Module]:
        """BatchNorm modules that must stay in eval mode during training at ``epoch`` under the BN policy."""
        if self.config.bn_policy == "train":
            return []
        trainable = self.trainable_at(epoch)
        chosen = []
        for name, module in plan_named_modules(model):
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                params = [f"{name}.{p}" for p, _ in module.named_parameters()]
                if self.config.bn_policy == "eval" or (params and not any(p in trainable for p in params)):
                    chosen.append(module)
        return chosen

    def frozen_batchnorm_names(self, model: torch.nn.Module) -> list[str]:
        """BatchNorm modules whose statistics never update in this run."""
        keep = {id(m) for m in self.frozen_batchnorm(model, max(self.change_epochs(), default=0))}
        return [n for n, m in plan_named_modules(model) if id(m) in keep]

    def optimizer_groups(self, model: torch.nn.Module) -> list[dict]:
        """Parameter groups for torch optimizers: every parameter that trains at some point, frozen ones never."""
        params = dict(plan_named_parameters(model))
        missing = [n for g in self.groups for n in g.params if n not in params]
        if missing:
            raise TransferError(f"the plan does not fit this model (no parameter {missing[0]!r}); build the plan from the model you train")
        # trains_from_epoch: the trainer holds a group's weight decay until then (engines that zero-fill gradients)
        return [
            {"params": [params[n] for n in g.params], "lr": g.lr, "weight_decay": g.weight_decay, "name": g.name,
             "trains_from_epoch": g.trains_from_epoch}
            for g in self.groups if not g.frozen
        ]

    # ------------------------------------------------------------------------------------------- reporting
    def table(self, epoch: int | None = None) -> str:
        c = self.config
        head = (f"TransferPlan: strategy={c.strategy} freeze={c.freeze} bn_policy={c.bn_policy} lr={c.learning_rate:g} "
                + (f"lora_lr={c.lora_learning_rate:g} lora_r={c.lora_r} lora_alpha={c.lora_alpha:g} "
                   f"lora_dropout={c.lora_dropout:g}" if c.strategy == "lora"
                   else f"backbone_x{c.backbone_lr_multiplier:g}") + f" layer_decay={c.layer_decay:g}"
                + (f" reinit={','.join(self.reinit_modules)}" if self.reinit_modules else "")
                + (f" (epoch {epoch})" if epoch is not None else ""))
        rows = [head, f"{'depth':>5}  {'group':<34} {'params':>7} {'lr':>10} {'wd':>7}  trains"]
        for g in self.groups:
            if g.frozen:
                when = "frozen"
            elif epoch is not None:
                when = "yes" if g.trains_from_epoch <= epoch else f"from epoch {g.trains_from_epoch}"
            else:
                when = f"from epoch {g.trains_from_epoch}"
            rows.append(f"{g.depth:>5}  {g.name[:34]:<34} {len(g.params):>7} {g.lr:>10.3g} {g.weight_decay:>7.3g}  {when}")
        rows.append(self.frozen_share())
        if c.strategy == "lora" and self.sizes:
            rows.append(self.trainable_share())
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {
            "version": PLAN_VERSION,
            "config": asdict(self.config),
            "layer_map": {"source": self.layer_map_source, "depth_names": self.depth_names},
            "reinitialized_modules": self.reinit_modules,
            "groups": [
                {"name": g.name, "depth": g.depth, "lr": g.lr, "weight_decay": g.weight_decay, "new": g.new,
                 "frozen": g.frozen, "trains_from_epoch": g.trains_from_epoch, "params": g.params}
                for g in self.groups
            ],
        }

    def save(self, folder, model: torch.nn.Module | None = None) -> Path:
        payload = self.to_dict()
        if model is not None:
            payload["frozen_batchnorm_modules"] = self.frozen_batchnorm_names(model)
        path = Path(folder) / PLAN_FILE
        tmp = path.with_name(f".{PLAN_FILE}.tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, path)  # a checkpoint counts as complete once this file exists: never leave half of it
        return path

    @classmethod
    def from_dict(cls, payload: dict) -> "TransferPlan":
        if payload.get("version") != PLAN_VERSION:
            raise TransferError(f"{PLAN_FILE} has version {payload.get('version')!r}, expected {PLAN_VERSION}; rebuild the plan")
        groups = [ParamGroup(g["name"], g["depth"], g["lr"], g["weight_decay"], g["trains_from_epoch"], g["new"], list(g["params"]))
                  for g in payload["groups"]]
        return cls(TransferConfig(**payload["config"]), groups, payload["layer_map"]["depth_names"],
                   payload.get("reinitialized_modules", []), payload["layer_map"]["source"])

    @classmethod
    def load(cls, folder_or_file) -> "TransferPlan":
        path = Path(folder_or_file)
        path = path / PLAN_FILE if path.is_dir() else path
        if not path.is_file():
            raise TransferError(f"no {PLAN_FILE} in {str(path.parent)!r}; was this checkpoint written by TransferTrainer?")
        return cls.from_dict(json.loads(path.read_text()))

    def differences(self, other: "TransferPlan") -> list[str]:
        """What differs between two plans (empty when they train the same parameters the same way)."""
        mine, theirs = self.to_dict(), other.to_dict()
        diffs = [f"config.{k}: {theirs['config'].get(k)!r} -> {v!r}" for k, v in mine["config"].items()
                 if theirs["config"].get(k) != v]
        if not diffs and mine["groups"] != theirs["groups"]:
            diffs.append("parameter groups differ (another model or layer map)")
        return diffs


# Modules that wrap a model for an engine put their own name into every parameter path: FSDP v1
# (`_fsdp_wrapped_module.`), activation checkpointing (`_checkpoint_wrapped_module.`), torch.compile (`_orig_mod.`).
WRAPPER_NAME_PARTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})


def plan_name(name: str) -> str:
    """A parameter or module path as the plan knows it: without the parts engine wrappers insert."""
    if not any(part in name for part in WRAPPER_NAME_PARTS):
        return name
    return ".".join(part for part in name.split(".") if part not in WRAPPER_NAME_PARTS)


def plan_named_parameters(model: torch.nn.Module):
    """``model.named_parameters()`` under the plan's names, for a bare model or one an engine wrapped (FSDP v1)."""
    return ((plan_name(n), p) for n, p in model.named_parameters())


def plan_named_modules(model: torch.nn.Module):
    return ((plan_name(n), m) for n, m in model.named_modules())


def _start_epochs(config: TransferConfig, layer_map: LayerMap, frozen: set[str], new: set[str]) -> dict[str, int | None]:
    """Epoch from which each parameter trains (None: never)."""
    start: dict[str, int | None] = {}
    body = layer_map.body
    # Gradual unfreezing counts only the depth groups that train at all, from the top down.
    trainable_depths = [g.index for g in reversed(body) if any(n not in frozen and n not in new for n in g.param_names)]
    for g in layer_map.groups:
        for n in g.param_names:
            if n in frozen:
                start[n] = None
            elif n in new or g.is_head:
                start[n] = 0
            elif config.strategy in ("lp_ft", "lora") and config.lp_epochs:
                start[n] = config.lp_epochs
            elif config.gradual_unfreeze_epochs:
                start[n] = config.gradual_unfreeze_epochs * (trainable_depths.index(g.index) + 1)
            else:
                start[n] = 0
    return start


def _lora_sets(names: list[str], layer_map: LayerMap, frozen_by_rule: set[str]) -> tuple[set[str], set[str], set[str]]:
    """(LoRA weights, new = the head's trained copy, frozen = everything else) of a peft-wrapped model.

    peft keeps the head twice: ``modules_to_save.default`` trains, ``original_module`` stays as loaded. A head outside
    ``modules_to_save`` would be frozen at random and lost from the saved adapter (peft issues #310, #577): refused.
    LoRA weights in depth groups the --freeze rule freezes stay frozen too.
    """
    from .backbones.peft_adapter import is_lora_param, is_original_copy_param, is_saved_copy_param

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
    frozen = set(names) - saved - (adapters - frozen_by_rule)
    return adapters - frozen_by_rule, saved, frozen
