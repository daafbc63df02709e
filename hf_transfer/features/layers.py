"""Feature layers: where features are read (``pooled``, a depth group, a concatenation) and ``--layers`` parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import TransferError
from ..layers import LayerMap

POOLED = "pooled"
POOLINGS = ("avg", "avgmax")


@dataclass(frozen=True)
class FeatureLayer:
    """Where features are read: ``depth`` None is the pooled bottleneck; ``parts`` makes a concatenation.

    A concatenation (``3+7+pooled``) is its single layers' features side by side, in ``parts`` order (shallow first,
    pooled last). It is built from the single layers' (cached) features: it never needs a forward of its own.
    """

    name: str  # "pooled", "depth 12 (blocks.5.0)", "concat 3+7+12+pooled"
    depth: int | None = None
    module: str | None = None  # the hooked output module (None for pooled and for concatenations)
    pooling: str = "avg"  # a depth map's global pooling: avg, or avgmax (average and max side by side)
    parts: tuple["FeatureLayer", ...] = ()

    @property
    def is_pooled(self) -> bool:
        return self.depth is None and not self.parts

    @property
    def is_concat(self) -> bool:
        return bool(self.parts)

    @property
    def singles(self) -> tuple["FeatureLayer", ...]:
        """The single layers whose features this one is made of (itself, unless a concatenation)."""
        return self.parts or (self,)

    @property
    def key(self) -> str:
        if self.parts:
            return "+".join(part.key for part in self.parts)
        if self.is_pooled:
            return POOLED
        # avg keeps the key it always had: entries cached before avgmax existed stay valid
        return f"depth{self.depth}:{self.module}" + ("" if self.pooling == "avg" else f":{self.pooling}")

    @property
    def spec(self) -> str:
        """The --layers text that names this layer (``3``, ``pooled``, ``3+7+pooled``); pooling is --pooling's."""
        if self.parts:
            return "+".join(part.spec for part in self.parts)
        return POOLED if self.is_pooled else str(self.depth)


def _depth_layer(group, pooling: str = "avg") -> FeatureLayer:
    suffix = "" if pooling == "avg" else " avg+max"
    return FeatureLayer(f"depth {group.index} ({group.name}){suffix}", group.index, group.output_module, pooling)


def concat_layer(parts: Sequence[FeatureLayer]) -> FeatureLayer:
    """Single layers -> their concatenation, parts ordered shallow first, pooled last (``3+7`` equals ``7+3``)."""
    ordered = sorted(dict.fromkeys(parts), key=lambda l: (l.is_pooled, l.depth if l.depth is not None else 0))
    if len(ordered) == 1:
        return ordered[0]
    suffix = " avg+max" if any(p.pooling != "avg" and not p.is_pooled for p in ordered) else ""
    return FeatureLayer("concat " + "+".join(p.spec for p in ordered) + suffix, parts=tuple(ordered))


def auto_depths(layer_map: LayerMap) -> list[int]:
    """Three evenly spaced depths, at 1/4, 1/2 and 3/4 of the body."""
    count = len(layer_map.body)
    return sorted({max(0, round(count * f) - 1) for f in (0.25, 0.5, 0.75)})


def parse_layers(spec: str | Sequence[str] | None, layer_map: LayerMap, pooling: str = "avg") -> list[FeatureLayer]:
    """``--layers`` text -> feature layers: single depths shallow first, pooled, then concatenations.

    Comma-separated candidates, each ``pooled``, a depth index (negative counts from the end), ``all`` (every depth
    + pooled), ``auto``, ``concat``, or depths joined with ``+`` into one concatenated feature (``3+7+pooled``).
    ``auto`` is three evenly spaced depths (at 1/4, 1/2, 3/4 of the body), ``pooled``, and their concatenation:
    enough to see where features transfer best without probing every block (dissimilar data often peaks in the
    middle of the network, and the depths side by side often beat any one of them). ``concat`` is that
    concatenation alone. ``pooling`` (avg | avgmax) is how depth maps are pooled; the bottleneck keeps the model's.
    """
    if pooling not in POOLINGS:
        raise TransferError(f"--pooling {pooling!r} is not understood; use avg (global average) or avgmax "
                            "(global average and global max side by side)")
    body = layer_map.body
    if spec is None:
        spec = "auto"
    items = [s.strip() for part in ([spec] if isinstance(spec, str) else spec) for s in str(part).split(",") if s.strip()]
    if not items:
        raise TransferError("--layers is empty; pass pooled, all, auto, concat or depth indices such as '3,7,pooled' "
                            "or '3+7+pooled'")

    def depth_of(item: str) -> int:
        if not re.fullmatch(r"-?\d+", item):
            raise TransferError(f"--layers entry {item!r} is not understood; use pooled, all, auto, concat, depth "
                                "indices like '3,7,pooled', or depths joined with + like '3+7+pooled'")
        depth = int(item) + (len(body) if int(item) < 0 else 0)
        if not 0 <= depth < len(body):
            raise TransferError(
                f"--layers depth {item} is out of range: this backbone has depths 0-{len(body) - 1} "
                f"(and 'pooled'); see the depth table printed at start"
            )
        return depth

    def single(item: str) -> FeatureLayer:
        return FeatureLayer(POOLED) if item == POOLED else _depth_layer(body[depth_of(item)], pooling)

    def auto_concat() -> FeatureLayer:
        return concat_layer([_depth_layer(body[d], pooling) for d in auto_depths(layer_map) if body[d].output_module]
                            + [FeatureLayer(POOLED)])

    depths: set[int] = set()
    pooled = False
    concats: list[FeatureLayer] = []

    def add(joined: FeatureLayer) -> None:  # a "concatenation" of one layer is that layer
        nonlocal pooled
        if joined.is_concat:
            concats.append(joined)
        elif joined.is_pooled:
            pooled = True
        else:
            depths.add(joined.depth)

    for item in items:
        if item == POOLED:
            pooled = True
        elif item == "all":
            depths.update(g.index for g in body)
            pooled = True
        elif item == "auto":
            depths.update(auto_depths(layer_map))
            pooled = True
            add(auto_concat())
        elif item == "concat":
            add(auto_concat())
        elif "+" in item:
            parts = [single(p.strip()) for p in item.split("+")]
            unpoolable = [p for p in parts if not p.is_pooled and not p.module]
            if unpoolable:
                raise TransferError(f"--layers {item!r}: depth {unpoolable[0].depth} has no single output module to "
                                    "read features from; choose other depths (see the depth table)")
            add(concat_layer(parts))
        else:
            depths.add(depth_of(item))
    layers = [_depth_layer(body[d], pooling) for d in sorted(depths) if body[d].output_module]
    if pooled:
        layers.append(FeatureLayer(POOLED))
    return layers + list({c.key: c for c in concats}.values())
