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

import dataclasses
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .backbones import build_layer_map
from .config import BN_POLICIES, TransferConfig  # noqa: F401 (TransferConfig is imported from here too)
from .engines import plan_name, plan_named_modules, plan_named_parameters  # noqa: F401 (wrapper-name stripping)
from .errors import TransferError
from .layers import LayerMap, frozen_by_rule as _frozen_by_rule  # noqa: F401 (the old name)

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
class FoldedRow:
    """Consecutive depth groups that train alike (same rate, same schedule), shown as one row."""

    first_depth: int
    last_depth: int
    first_name: str
    last_name: str
    tensors: int
    lr: str
    weight_decay: str
    when: str

    @property
    def depths(self) -> str:
        return f"{self.first_depth}" if self.first_depth == self.last_depth else f"{self.first_depth}-{self.last_depth}"

    @property
    def names(self) -> str:
        return self.first_name if self.first_name == self.last_name else f"{self.first_name} … {self.last_name}"


def fold_groups(groups: list[dict], when) -> list[FoldedRow]:
    """The plan's groups (``transfer_plan.json``'s dicts) folded for reading: a deep backbone has dozens of depth
    groups, most of them alike. ``when(group)`` says when a group trains; a group's ``/no_decay`` part (biases and
    normalization weights, weight decay 0) folds into its row, which shows the decayed part's weight decay."""
    rows: list[FoldedRow] = []
    for g in groups:
        name, no_decay = g["name"].removesuffix("/no_decay"), g["name"].endswith("/no_decay")
        lr, wd, trains = f"{g['lr']:.6g}", "0" if no_decay else f"{g['weight_decay']:.6g}", when(g)
        last = rows[-1] if rows else None
        if last is not None and last.lr == lr and last.when == trains:
            last.last_depth, last.last_name, last.tensors = g["depth"], name, last.tensors + len(g["params"])
            if not no_decay:
                last.weight_decay = wd
        else:
            rows.append(FoldedRow(g["depth"], g["depth"], name, name, len(g["params"]), lr, wd, trains))
    return rows


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
        if config.learning_rate is None:  # nothing given anywhere: the family's default
            config = dataclasses.replace(config, learning_rate=default_learning_rate(model))
        layer_map = layer_map or build_layer_map(model, config.layer_regex)
        names = [n for n, _ in model.named_parameters()]
        head = layer_map.head.index  # L in D^(L - i)
        reinit = _reinit_modules(model, config.reinit)
        new = set(layer_map.head.param_names) | {n for n in names if any(n.startswith(m + ".") for m in reinit)}
        roles = config.strategy_object.param_roles(config, names, layer_map,
                                                   _frozen_by_rule(config.freeze, layer_map, names), new)
        new, frozen, adapters, originals = roles.new, roles.frozen, roles.adapters, roles.originals

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
                + c.strategy_object.describe(c) + f" layer_decay={c.layer_decay:g}"
                + (f" reinit={','.join(self.reinit_modules)}" if self.reinit_modules else "")
                + (f" (epoch {epoch})" if epoch is not None else ""))
        def when(g: dict) -> str:
            if g["frozen"]:
                return "frozen"
            if epoch is not None and g["trains_from_epoch"] <= epoch:
                return "yes"
            return f"from epoch {g['trains_from_epoch']}"

        rows = [head, f"{'depths':>6}  {'groups':<44} {'tensors':>7} {'lr':>10} {'wd':>7}  trains"]
        for r in fold_groups(self.to_dict()["groups"], when):
            rows.append(f"{r.depths:>6}  {r.names[:44]:<44} {r.tensors:>7} {r.lr:>10} {r.weight_decay:>7}  {r.when}")
        rows.append(self.frozen_share())
        if c.strategy_object.trains_adapters and self.sizes:
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


def _start_epochs(config: TransferConfig, layer_map: LayerMap, frozen: set[str], new: set[str]) -> dict[str, int | None]:
    """Epoch from which each parameter trains (None: never)."""
    start: dict[str, int | None] = {}
    body = layer_map.body
    head_only = config.strategy_object.head_only_epochs(config)
    # Gradual unfreezing counts only the depth groups that train at all, from the top down.
    trainable_depths = [g.index for g in reversed(body) if any(n not in frozen and n not in new for n in g.param_names)]
    for g in layer_map.groups:
        for n in g.param_names:
            if n in frozen:
                start[n] = None
            elif n in new or g.is_head:
                start[n] = 0
            elif head_only:
                start[n] = head_only
            elif config.gradual_unfreeze_epochs:
                start[n] = config.gradual_unfreeze_epochs * (trainable_depths.index(g.index) + 1)
            else:
                start[n] = 0
    return start
