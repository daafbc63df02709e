"""LayerMap: one ordered list of depth groups for every backbone, timm or transformers.

Depth 0 is the stem / embeddings, then the stages or blocks in forward order, then the final body layers
(last norm, `conv_head`), and the classifier head last. Freezing rules (`depth:K`, `fraction:F`), layer-wise
learning-rate decay, gradual unfreezing and per-depth feature probing all read this one map.

* timm models (also inside `TimmWrapper`): timm's own ``group_matcher(coarse=False)``; the classifier named by
  ``pretrained_cfg["classifier"]`` is split off into the head group.
* transformers models: parameter-name rules for the usual layouts (``embeddings``/``embedder``/``conv_stem``,
  then ``encoder.layer(s)/stages/blocks.N``; anything outside the base model, e.g. ``classifier``, is the head).
* anything else: an explicit ``layer_regex`` with one ``(\\d+)`` group marks the blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .errors import TransferError

STEM_PATTERN = re.compile(r"(^|\.)(embeddings|embedder|conv_stem|stem|patch_embed|cls_token|pos_embed)(\.|$)")
BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:encoder\.)?(?:layers|layer|stages|blocks)\.(\d+)\.")


@dataclass
class DepthGroup:
    index: int
    name: str
    param_names: list[str]
    module_names: list[str] = field(default_factory=list)  # smallest modules covering exactly these parameters
    is_head: bool = False

    @property
    def output_module(self) -> str | None:
        """The group's last module in registration (≈ forward) order: hook it to read the group's output."""
        return self.module_names[-1] if self.module_names else None


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


def _module_parameters(model: torch.nn.Module) -> dict[str, list[str]]:
    """Every module that holds parameters -> their full names, in registration order (one walk of the model)."""
    owned: dict[str, list[str]] = {}
    for full_name, _ in model.named_parameters():
        parts = full_name.split(".")
        for cut in range(len(parts)):  # the root module (""), then each ancestor of the parameter
            owned.setdefault(".".join(parts[:cut]), []).append(full_name)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return dict(sorted(owned.items(), key=lambda item: order.get(item[0], len(order))))


def _covering_modules(module_params: dict[str, list[str]], names: list[str]) -> list[str]:
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


def _classifier_prefixes(model) -> list[str]:
    """Parameter-name prefixes of the classification head."""
    from .backbones import is_timm_wrapper

    if is_timm_wrapper(model):
        classifier = model.timm_model.pretrained_cfg.get("classifier") or "head"
        names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
        return [f"timm_model.{n}." for n in names]
    if hasattr(model, "pretrained_cfg") and not hasattr(model, "config"):
        classifier = model.pretrained_cfg.get("classifier") or "head"
        return [f"{n}." for n in (classifier if isinstance(classifier, (list, tuple)) else [classifier])]
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and hasattr(model, prefix):
        return [n + "." for n, _ in model.named_children() if n != prefix]
    return ["classifier.", "head.", "fc."]


def _groups_from_ids(model, ordered: list[tuple[str, list[str]]], head_prefixes: list[str]) -> list[DepthGroup]:
    """[(name, params)] in depth order -> DepthGroups, with head parameters moved into a final head group."""
    groups, head = [], []
    for name, params in ordered:
        body = [p for p in params if not p.startswith(tuple(head_prefixes))]
        head += [p for p in params if p.startswith(tuple(head_prefixes))]
        if body:
            groups.append((name, body))
    all_names = [n for n, _ in model.named_parameters()]
    if len(groups) < 1 or not head:
        raise TransferError(
            f"cannot find the classifier head of {type(model).__name__} (looked for {', '.join(head_prefixes)}); "
            "pass a model with a classification head"
        )
    groups.append(("head", [n for n in all_names if n in set(head)]))
    result = []
    module_params = _module_parameters(model)
    for i, (name, params) in enumerate(groups):
        modules = _covering_modules(module_params, params)
        if name is None:  # name a group after its modules: 'blocks.4+conv_head+bn2'
            short = [m.removeprefix("timm_model.") for m in modules]
            name = _common_prefix(params).removeprefix("timm_model.") if len(short) > 1 and "." in _common_prefix(params) else "+".join(short)
        result.append(DepthGroup(i, name, params, modules, is_head=(i == len(groups) - 1)))
    return result


def _common_prefix(names: list[str]) -> str:
    """'blocks.3.1' for ['blocks.3.1.conv.weight', 'blocks.3.1.bn.bias']."""
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _timm_layer_map(model, inner: torch.nn.Module, prefix: str) -> LayerMap:
    from timm.models import group_parameters

    grouped = group_parameters(inner, inner.group_matcher(coarse=False))
    ordered = [("stem" if i == 0 else None, [prefix + n for n in names]) for i, (_, names) in enumerate(sorted(grouped.items()))]
    return LayerMap(_groups_from_ids(model, ordered, _classifier_prefixes(model)), "timm group_matcher")


def _rule_layer_map(model, block_pattern: re.Pattern, source: str) -> LayerMap:
    head_prefixes = _classifier_prefixes(model)
    stem, blocks, final, head = [], {}, [], []
    for name, _ in model.named_parameters():
        if name.startswith(tuple(head_prefixes)):
            head.append(name)
            continue
        match = block_pattern.search(name)
        if match:
            key = int(match.group(1))
            blocks.setdefault(key, ([], name[: match.end(1)]))[0].append(name)
        elif blocks:
            final.append(name)
        else:
            stem.append(name)
    if not blocks:
        raise TransferError(
            f"cannot map the layers of {type(model).__name__} ({source} found no numbered blocks); "
            "pass --layer_regex with one (\\d+) group that numbers the blocks, e.g. 'encoder\\.layer\\.(\\d+)\\.'"
        )
    ordered = [("stem", stem)] if stem else []
    ordered += [(label, params) for _, (params, label) in sorted(blocks.items())]
    if final:
        ordered.append(("final", final))
    ordered.append(("head", head))
    return LayerMap(_groups_from_ids(model, ordered, head_prefixes), source)


def build_layer_map(model: torch.nn.Module, layer_regex: str | None = None) -> LayerMap:
    """The depth groups of ``model`` (a TimmWrapper, a transformers classifier or a bare timm model)."""
    from .backbones import is_timm_wrapper

    if layer_regex:
        try:
            pattern = re.compile(layer_regex)
        except re.error as err:
            raise TransferError(f"--layer_regex {layer_regex!r} is not a valid regular expression ({err})") from None
        if pattern.groups != 1:
            raise TransferError(f"--layer_regex {layer_regex!r} needs exactly one (\\d+) group that numbers the blocks")
        return _rule_layer_map(model, pattern, "layer_regex")
    if hasattr(model, "config") and is_timm_wrapper(model):
        return _timm_layer_map(model, model.timm_model, "timm_model.")
    if hasattr(model, "group_matcher") and not hasattr(model, "config"):
        return _timm_layer_map(model, model, "")
    return _rule_layer_map(model, BLOCK_PATTERN, "transformers rules")
