"""LayerMap: one ordered list of depth groups for every backbone, timm or transformers.

Depth 0 is the stem / embeddings, then the stages or blocks in forward order, then the final body layers
(last norm, `conv_head`), and the head last: every classifier with everything between the pooled feature and the
logits (a norm before the linear, twin distillation heads). Freezing rules (`depth:K`, `fraction:F`), layer-wise
learning-rate decay, gradual unfreezing and per-depth feature probing all read this one map.

This module holds the map and the grouping rules; which rule applies to which model is the backbone adapter's
business (`hf_transfer.backbones`), so nothing here knows a model family.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .errors import TransferError

BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:encoder\.)?(?:layers|layer|stages|blocks|block)\.(\d+)\.")


@dataclass
class DepthGroup:
    index: int
    name: str
    param_names: list[str]
    module_names: list[str] = field(default_factory=list)  # smallest modules covering exactly these parameters
    is_head: bool = False
    output_module: str | None = None  # the module whose output is this group's output (last to run)


@dataclass
class LayerMap:
    groups: list[DepthGroup]
    source: str  # "timm group_matcher", "transformers rules", "layer_regex"

    def __post_init__(self):
        self._depth_of = {name: g.index for g in self.groups for name in g.param_names}

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def head(self) -> DepthGroup:
        return self.groups[-1]

    @property
    def body(self) -> list[DepthGroup]:
        return [g for g in self.groups if not g.is_head]

    def depth_of(self, param_name: str) -> int:
        return self._depth_of[param_name]

    def param_names(self, depths) -> list[str]:
        wanted = set(depths)
        return [n for g in self.groups if g.index in wanted for n in g.param_names]

    def table(self) -> str:
        rows = [f"{'depth':>5}  {'group':<28} {'params':>8}  modules"]
        for g in self.groups:
            mods = ", ".join(g.module_names[:3]) + (" …" if len(g.module_names) > 3 else "")
            rows.append(f"{g.index:>5}  {g.name:<28} {len(g.param_names):>8}  {mods}")
        return "\n".join(rows)


def module_parameters(model: torch.nn.Module) -> dict[str, list[str]]:
    """Every module that holds parameters -> their full names, in registration order (one walk of the model)."""
    owned: dict[str, list[str]] = {}
    for full_name, _ in model.named_parameters():
        parts = full_name.split(".")
        for cut in range(len(parts)):  # the root module (""), then each ancestor of the parameter
            owned.setdefault(".".join(parts[:cut]), []).append(full_name)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return dict(sorted(owned.items(), key=lambda item: order.get(item[0], len(order))))


def covering_modules(module_params: dict[str, list[str]], names: Sequence[str]) -> list[str]:
    """The highest modules whose parameters all lie in ``names`` (so a hook on them sees this group only)."""
    wanted = set(names)
    chosen: list[str] = []
    for mod_name, params in module_params.items():  # registration order: parents before children
        if not mod_name or not wanted.issuperset(params):
            continue
        if any(mod_name.startswith(parent + ".") for parent in chosen):
            continue
        chosen.append(mod_name)
    return chosen


def _common_prefix(names: list[str]) -> str:
    """'blocks.3.1' for ['blocks.3.1.conv.weight', 'blocks.3.1.bn.bias']."""
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def build_groups(model: torch.nn.Module, ordered: list[tuple[str | None, list[str]]], head: Sequence[str], source: str,
                 run_order: Sequence[str] = (), strip: str = "") -> LayerMap:
    """[(name or None, body parameters)] in depth order + the head's parameters -> a LayerMap.

    ``run_order`` (modules in the order a forward first ran them) picks each group's output module: the one of its
    covering modules that ran last. A ``None`` name is made from the group's modules ('blocks.4+conv_head').
    """
    head_set = set(head)
    groups = [(name, [p for p in params if p not in head_set]) for name, params in ordered]
    groups = [(name, params) for name, params in groups if params]
    if not groups or not head_set:
        raise TransferError(f"cannot find the body and the classifier head of {type(model).__name__}; "
                            "pass a model with a classification head (or --layer_regex for the blocks)")
    all_names = [n for n, _ in model.named_parameters()]
    groups.append(("head", [n for n in all_names if n in head_set]))
    ran = {name: i for i, name in enumerate(run_order)}
    module_params = module_parameters(model)
    result = []
    for i, (name, params) in enumerate(groups):
        modules = covering_modules(module_params, params)
        if name is None:
            short = [m.removeprefix(strip) for m in modules]
            prefix = _common_prefix(params).removeprefix(strip)
            name = prefix if len(short) > 1 and "." in prefix else "+".join(short)
        # The output is the covering module that ran last; registration order when no forward was traced.
        output = max(modules, key=lambda m: (ran.get(m, -1), modules.index(m))) if modules else None
        result.append(DepthGroup(i, name, params, modules, is_head=(i == len(groups) - 1), output_module=output))
    return LayerMap(result, source)


def rule_groups(model: torch.nn.Module, pattern: re.Pattern, head: Sequence[str], run_order: Sequence[str] = ()
                ) -> list[tuple[str | None, list[str]]]:
    """Body parameters grouped by numbered block, in forward order.

    A block is keyed by its whole path up to the matched number (``network.2.blocks.0``), not by the number alone,
    so blocks numbered inside each stage do not merge across stages. Parameters are ordered by when their module
    first ran (``run_order``), registration order otherwise; unmatched runs between blocks (downsampling layers)
    become their own groups, those before the first block the stem, those after the last the final group.
    """
    head_set = set(head)
    ran = {name: i for i, name in enumerate(run_order)}
    ordered_params, position = [], -1.0
    for name, _ in model.named_parameters():  # registration order; a module that never ran stays after its neighbour
        if name in head_set:
            continue
        owner = name.rpartition(".")[0]
        position = ran.get(owner, position + 1e-6) if run_order else position + 1
        ordered_params.append((position, len(ordered_params), name))
    ordered_params.sort()
    segments: list[tuple[str | None, list[str]]] = []
    for _, _, name in ordered_params:
        match = pattern.search(name)
        key = name[: match.end(1)] if match else None
        if segments and segments[-1][0] == key:
            segments[-1][1].append(name)
        else:
            segments.append((key, [name]))
    if not any(key for key, _ in segments):
        raise TransferError(
            f"cannot map the layers of {type(model).__name__} (no numbered blocks found); pass --layer_regex with one "
            "(\\d+) group that numbers the blocks, e.g. 'encoder\\.layer\\.(\\d+)\\.'")
    first = next(i for i, (key, _) in enumerate(segments) if key)
    last = max(i for i, (key, _) in enumerate(segments) if key)
    named = []
    for i, (key, params) in enumerate(segments):
        label = key if key else "stem" if i < first else "final" if i > last else None
        named.append((label, params))
    return named


def compile_layer_regex(layer_regex: str) -> re.Pattern:
    try:
        pattern = re.compile(layer_regex)
    except re.error as err:
        raise TransferError(f"--layer_regex {layer_regex!r} is not a valid regular expression ({err})") from None
    if pattern.groups != 1:
        raise TransferError(f"--layer_regex {layer_regex!r} needs exactly one (\\d+) group that numbers the blocks")
    return pattern


def frozen_by_rule(rule: str, layer_map: LayerMap, names: list[str]) -> set[str]:
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
