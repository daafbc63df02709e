"""BackboneAdapter: everything hf_transfer needs to know about one backbone family, in one place.

An adapter is bound to one loaded model and answers:

* ``layer_map()``: the ordered depth groups (stem … blocks … final … head); the head holds every classifier and
  everything between the pooled feature and the logits (a norm before the linear, twin distillation heads);
* ``pooled_features(x)``: the feature the head consumes, (N, C);
* ``write_linear_head(W, b)``: put a linear probe into the head so that the model's logits equal the probe's;
* ``feature_layout(module)``: whether a depth group's 4-D output is NHWC (the intermediate features' layout);
* ``change_input_size(px)``: resample / ``set_input_size`` / a one-line refusal, and a truthful report;
* ``data_config()`` / ``set_preprocessing(px)`` / ``image_processor(px)``: the preprocessing;
* ``trainable_model()``: the class to train with (an inference-only class becomes its trainable sibling).

Adapters are picked by `adapter_for(model)` from a registry (most specific first), like timm's model registry; an
unknown model gets the generic module adapter, which says so. Loading records the adapter (with what loading
learned, such as the checkpoint's image processor) in a weak map, so nothing is hung on the model itself.
"""

from __future__ import annotations

import re
import weakref
from typing import Callable

import torch

from ..errors import TransferError
from ..layers import LayerMap, build_groups, compile_layer_regex, rule_groups

# Parameters whose shape is tied to the input size (patch grid, attention windows, per-resolution biases).
SIZE_DEPENDENT_PARAM = re.compile(r"(^|\.)(pos_embed|position_embeddings|absolute_pos_embed|attention_biases|"
                                  r"attention_bias_cache|relative_position_bias_table)$")
NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)


class BackboneAdapter:
    """The generic adapter: any ``nn.Module`` classifier, blocks from ``--layer_regex`` or the usual names."""

    family = "generic"
    summary = "unknown architecture: numbered blocks by name, head = children named classifier/head/fc"

    def __init__(self, model: torch.nn.Module, image_processor=None):
        self.model = model
        self.image_processor_ = image_processor  # the checkpoint's own processor, if it shipped one
        self.image_size: int | None = None  # the resolution the model trains at, once set
        self._layer_maps: dict[str | None, LayerMap] = {}

    # ------------------------------------------------------------------------------------------- matching
    @classmethod
    def matches(cls, model) -> bool:
        return True

    @property
    def note(self) -> str | None:
        """A line for the log when no specific adapter knows this model."""
        return (f"no adapter knows {type(self.model).__name__}: generic rules (pass --layer_regex if the depth "
                "table looks wrong)")

    # ------------------------------------------------------------------------------------------- structure
    def head_roots(self) -> list[str]:
        """Top modules that hold the classifier(s)."""
        names = [n for n, m in self.model.named_children() if n in ("classifier", "head", "fc") and any(True for _ in m.parameters())]
        return names

    def native_input(self) -> torch.Tensor:
        size = int(self.data_config()["input_size"][-1])
        return torch.zeros(1, 3, size, size)

    def run(self, pixel_values: torch.Tensor):
        return self.model(pixel_values)

    def run_order(self) -> list[str]:
        """Modules in the order a forward first runs them (one eval forward at the native size; [] if it fails)."""
        if not hasattr(self, "_run_order"):
            self._run_order = trace_run_order(self.model, lambda: self.run(self.native_input()))
        return self._run_order

    def head_params(self) -> list[str]:
        """Parameters of the head: every classifier, and whatever runs between the pooled feature and the logits."""
        roots = tuple(r + "." for r in self.head_roots())
        return [n for n, _ in self.model.named_parameters() if n.startswith(roots)]

    def layer_map(self, layer_regex: str | None = None) -> LayerMap:
        if layer_regex not in self._layer_maps:
            self._layer_maps[layer_regex] = self._build_layer_map(layer_regex)
        return self._layer_maps[layer_regex]

    def _build_layer_map(self, layer_regex: str | None) -> LayerMap:
        head = self.head_params()
        if layer_regex:
            pattern, source = compile_layer_regex(layer_regex), "layer_regex"
        else:
            pattern, source = self.block_pattern(), self.rule_source
        run_order = self.run_order()  # [] when the model cannot run a native-size input: registration order
        return build_groups(self.model, rule_groups(self.model, pattern, head, run_order), head, source, run_order)

    rule_source = "generic rules"

    def block_pattern(self) -> re.Pattern:
        from ..layers import BLOCK_PATTERN

        return BLOCK_PATTERN

    # ------------------------------------------------------------------------------------------- the head
    def classifier_linears(self) -> list[tuple[str, torch.nn.Linear]]:
        """Every classifier's final ``nn.Linear`` (several for twin heads whose logits are averaged)."""
        modules = dict(self.model.named_modules())
        head = set(self.head_params())
        found = []
        for root in self.head_roots():
            linears = [(f"{root}.{n}" if n else root, m) for n, m in modules[root].named_modules()
                       if isinstance(m, torch.nn.Linear)]
            linears = [(n, m) for n, m in linears if f"{n}.weight" in head]
            if linears:
                found.append(linears[-1])
        if not found:
            raise TransferError(f"the head of {type(self.model).__name__} has no nn.Linear; pass a model with a linear classifier")
        return found

    def pooled_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The head's input, (N, C): read with a pre-hook on the first classifier that runs."""
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())

        def hook(module, args):
            captured.setdefault("pooled", args[0].flatten(1))
            raise _StopForward

        handles = [modules[root].register_forward_pre_hook(hook) for root in self.head_roots()]
        try:
            self.run(pixel_values)
        except _StopForward:
            if "pooled" not in captured:  # a caller's hook (features.FeatureExtractor) stopped before the head
                raise
        finally:
            for handle in handles:
                handle.remove()
        return captured["pooled"]

    def write_linear_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Make the logits ``pooled @ weight.T + bias``: every norm inside the head becomes the identity and every
        classifier gets the probe (twin heads are averaged, so each gets the same)."""
        head = set(self.head_params())
        with torch.no_grad():
            for name, module in self.model.named_modules():
                # only the norms after the pooled feature: ConvNeXt's head.norm runs before it and is body
                if isinstance(module, NORMS) and any(f"{name}.{p}" in head for p, _ in module.named_parameters()):
                    _make_identity(module)
            for name, linear in self.classifier_linears():
                if linear.out_features != weight.shape[0] or linear.in_features != weight.shape[1]:
                    raise TransferError(f"the probe head is {weight.shape[1]}->{weight.shape[0]} but {name} is "
                                        f"{linear.in_features}->{linear.out_features}; probe and backbone do not match")
                linear.weight.copy_(weight.to(linear.weight.dtype))
                linear.bias.copy_(bias.to(linear.bias.dtype))

    def head_state(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of the head (what an exported probe hands to LP-FT), sharing the model's storage."""
        head = set(self.head_params())
        owners = {n.rpartition(".")[0] for n in head}
        return {k: v for k, v in self.model.state_dict().items() if k in head or k.rpartition(".")[0] in owners}

    # --------------------------------------------------------------------------------------- intermediates
    def feature_layout(self, module: torch.nn.Module) -> bool:
        """True when the module's 4-D output is (N, H, W, C)."""
        fmt = getattr(module, "output_fmt", None)
        return fmt is not None and str(getattr(fmt, "value", fmt)).upper().endswith("NHWC")

    @property
    def nhwc_default(self) -> bool:
        return False

    # ------------------------------------------------------------------------------------------ input size
    def size_dependent_params(self) -> dict[str, torch.Size]:
        return {n: p.shape for n, p in self.model.named_parameters() if SIZE_DEPENDENT_PARAM.search(n)}

    def change_input_size(self, image_size: int) -> str:
        """Make the model take ``image_size`` inputs (in place) and say what that changed; refuse otherwise."""
        fixed = self.size_dependent_params()
        if fixed:
            raise TransferError(f"--image_size {image_size}: {type(self.model).__name__} has size-dependent parameters "
                                f"({name_some(fixed)}) that hf_transfer cannot adapt; use the model's native size")
        return self._forward_check(image_size, f"{image_size} px: no size-dependent parameters (global pooling), "
                                                "the weights are unchanged")

    def check_forward(self, image_size: int) -> None:
        """Raise the one-line refusal when a forward at ``image_size`` fails."""
        self._forward_check(image_size, "")

    def _forward_check(self, image_size: int, report: str) -> str:
        """``report`` if a forward at ``image_size`` works, else the refusal (no silent failure at the next step)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.run(torch.zeros(1, 3, image_size, image_size))
        except Exception as err:  # noqa: BLE001 - any failure means this size does not work
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise TransferError(f"--image_size {image_size}: {type(self.model).__name__} cannot take {image_size} px "
                                f"inputs ({type(err).__name__}: {first}); use its native size") from None
        finally:
            self.model.train(was_training)
        return report

    def total_stride(self) -> int | None:
        return None

    # -------------------------------------------------------------------------------------- preprocessing
    def data_config(self) -> dict:
        size = self.image_size or 224
        return {"input_size": (3, size, size), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
                "crop_pct": 1.0}

    def set_preprocessing(self, image_size: int | None) -> None:
        if image_size is not None:
            self.image_size = int(image_size)

    def image_processor(self, image_size: int | None = None):
        """The processor to save beside the model (None: the model's config.json carries its preprocessing)."""
        from transformers import ViTImageProcessor

        cfg = self.data_config()
        size = int(image_size or cfg["input_size"][-1])
        return ViTImageProcessor(do_resize=True, size={"height": size, "width": size}, image_mean=list(cfg["mean"]),
                                 image_std=list(cfg["std"]))

    def config_preprocessing(self) -> dict:
        """Preprocessing that lives in config.json rather than a processor file ({} when a processor file does)."""
        return {}

    def native_state_dict(self, state_dict: dict | None = None) -> dict | None:
        """The weights (``state_dict``, or the model's own) under the source library's own names, for a folder that
        library loads too (None: the model's own, as they are)."""
        return state_dict

    def bind_copy(self, model) -> "BackboneAdapter":
        """The adapter of a copy of this model (deepcopy for export), with what loading taught this one."""
        adapter = adapter_for(model, image_processor=self.image_processor_)
        adapter.image_size = self.image_size
        return adapter

    # ------------------------------------------------------------------------------------------- training
    def trainable_model(self):
        """The model to train: this one, or its trainable sibling with the same weights."""
        return self.model

    def prefers_channels_last(self) -> bool:
        """CNNs run markedly faster on CPU (measured ~1.7x for EfficientNet) with channels_last weights, where a
        one-step training check in a child process passes on this CPU (`channels_last_works`: fastvit hangs in a
        channels_last kernel); decided once per architecture."""
        if not hasattr(self, "_channels_last"):
            modules = list(self.model.modules())
            has_conv = any(isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1) or isinstance(m, torch.nn.BatchNorm2d)
                           for m in modules)
            has_attention = any("attention" in type(m).__name__.lower() or type(m).__name__ == "Attention" for m in modules)
            if not has_conv or has_attention:
                self._channels_last = False
            else:
                from .channels_last import channels_last_works

                size = int(self.image_size or self.data_config()["input_size"][-1])
                self._channels_last = channels_last_works(self.model, self.run, size)
        return self._channels_last

    # ------------------------------------------------------------------------------------------------ LoRA
    def lora_targets(self) -> tuple[list[str], str]:
        """The modules that get LoRA by default (full names) and the rule that chose them. The generic adapter does not
        know the family, so it names none rather than guess."""
        raise TransferError(f"hf_transfer has no default LoRA targets for {type(self.model).__name__} (an architecture "
                            "no adapter knows); pass --lora_target_modules, e.g. 'qkv' or 'regex:blocks\\.\\d+\\.conv'")


# Attention input projections that take LoRA, per naming scheme (fused first): timm, transformers 5, older code.
ATTENTION_PROJECTIONS = (("qkv",), ("q_proj", "v_proj"), ("query", "value"), ("q", "v"))
_ATTENTION_CLASS = re.compile(r"attention|attn", re.IGNORECASE)


def structural_lora_targets(model: torch.nn.Module, layer_map: LayerMap) -> tuple[list[str], str]:
    """Default LoRA targets read from the model's structure (timm and transformers families).

    * Models with attention: the query and value projections of every attention module (a fused ``qkv`` whole), as
      in the LoRA paper; ``qkv`` in timm, ``q_proj`` / ``v_proj`` in transformers 5.
    * CNNs: every dense layer of the body after the stem: linear layers and convolutions with ``groups == 1``
      (pointwise convolutions in EfficientNet / MobileNet blocks, ``mlp.fc1/fc2`` in ConvNeXt, every convolution of a
      ResNet block). Depthwise convolutions hold few weights and are left alone. A convolution that pads in its
      forward (timm ``Conv2dSame``) is taken only when it is 1x1 with stride 1, where LoRA's plain branch matches it.
    """
    head = set(layer_map.head.param_names)
    stem = set(layer_map.groups[0].param_names) if len(layer_map.body) > 1 else set()
    modules = dict(model.named_modules())

    def in_body(name: str, module: torch.nn.Module) -> bool:
        own = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
        return bool(own) and not any(p in head for p in own)

    attention: dict[str, list[str]] = {}  # attention module -> its linear children (leaf names)
    for name, module in modules.items():
        parent = name.rpartition(".")[0]
        if isinstance(module, torch.nn.Linear) and in_body(name, module) and _ATTENTION_CLASS.search(type(modules[parent]).__name__):
            attention.setdefault(parent, []).append(name.rpartition(".")[2])
    if attention:
        chosen, schemes = [], []
        for parent, leaves in attention.items():
            scheme = next((s for s in ATTENTION_PROJECTIONS if set(s) <= set(leaves)), None)
            if scheme:
                chosen += [f"{parent}.{leaf}" for leaf in scheme]
                schemes.append("/".join(scheme))
        if not chosen:
            some = next(iter(attention.items()))
            raise TransferError(f"cannot tell the query/value projections of {type(model).__name__}'s attention "
                                f"({some[0]} has {', '.join(some[1])}); pass --lora_target_modules with their names")
        return chosen, f"attention projections ({', '.join(dict.fromkeys(schemes))})"
    chosen, unmergeable, kinds = [], [], {"pointwise conv": 0, "kxk conv": 0, "linear": 0}
    for name, module in modules.items():
        if not name or not in_body(name, module) or any(f"{name}.{p}" in stem for p, _ in module.named_parameters(recurse=False)):
            continue
        if isinstance(module, torch.nn.Linear):
            kinds["linear"] += 1
        elif isinstance(module, torch.nn.Conv2d) and module.groups == 1:
            if not is_plain_layer(module):
                unmergeable.append(name)  # pads or standardizes its weight: a merged LoRA would not be the trained model
                continue
            kinds["pointwise conv" if module.kernel_size == (1, 1) else "kxk conv"] += 1
        else:
            continue
        chosen.append(name)
    if not chosen and unmergeable:
        raise TransferError(f"the {len(unmergeable)} dense convolutions of {type(model).__name__} transform their weight "
                            f"in their forward ({type(modules[unmergeable[0]]).__name__}: weight standardization or "
                            "dynamic padding), so a merged LoRA would not be the trained model; use --strategy partial "
                            "or full")
    if not chosen:
        raise TransferError(f"{type(model).__name__} has no attention projection, dense convolution or linear layer in "
                            "its body for LoRA; pass --lora_target_modules")
    what = ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in kinds.items() if n)
    return chosen, f"dense layers after the stem ({what})"


def is_plain_layer(module: torch.nn.Module) -> bool:
    """True when the module's output is the plain linear map / convolution of its own weight and bias.

    LoRA adds ``B(A(x))`` beside that map and a merge folds ``BA`` into the weight, so both agree only when the
    forward uses the weight as it is. Subclasses that pad dynamically (timm ``Conv2dSame`` with k > 1) or standardize
    their weight (BiT's ``WeightStandardizedConv2d``, timm ``StdConv2d``) do not: their merged model would not be the
    trained one. Checked by running the module once on a small random input.
    """
    if type(module) in (torch.nn.Linear, torch.nn.Conv2d):
        return True
    functional = torch.nn.functional
    weight = module.weight
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if isinstance(module, torch.nn.Linear):
            x = torch.randn(2, module.in_features, generator=g).to(weight)
            plain = functional.linear(x, weight, module.bias)
        elif isinstance(module, torch.nn.Conv2d) and isinstance(module.padding, tuple):
            side = max(module.kernel_size) + 2 * max(module.stride) + 3
            x = torch.randn(1, module.in_channels, side, side, generator=g).to(weight)
            plain = functional.conv2d(x, weight, module.bias, module.stride, module.padding, module.dilation, module.groups)
        else:
            return False
        try:
            out = module(x)
        except Exception:  # noqa: BLE001 - a layer that cannot run alone is not a plain one
            return False
    return out.shape == plain.shape and torch.allclose(out, plain, rtol=1e-4, atol=1e-5)


def name_some(names, strip: str = "") -> str:
    """'a.b' or 'a.b and 3 more': a report line names the first of many parameters."""
    names = [n.removeprefix(strip) for n in names]
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "") if names else "none"


class _StopForward(Exception):
    """Raised by a hook once what was asked for has been read: nothing after it is computed (the one early stop of
    the package: `features.FeatureExtractor` raises it too; the exported `modeling_probe` carries its own copy)."""


def _make_identity(norm: torch.nn.Module) -> None:
    """An eval-mode norm that passes its input through (BatchNorm: running stats 0 / 1 - eps, affine 1 / 0)."""
    if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
        if norm.running_mean is not None:
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
    if getattr(norm, "weight", None) is not None:
        norm.weight.fill_(1.0)
    if getattr(norm, "bias", None) is not None:
        norm.bias.zero_()
    if isinstance(norm, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
        raise TransferError(f"a {type(norm).__name__} after the pooled feature cannot become the identity; export "
                            "a probe of the pooled feature of another backbone")


def trace_run_order(model: torch.nn.Module, forward: Callable[[], object]) -> list[str]:
    """Names of the modules in the order a forward first calls them (eval mode, no grad, state restored)."""
    order: dict[str, None] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: order.setdefault(name, None))
               for name, m in model.named_modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward()
    except Exception:  # noqa: BLE001 - no trace: callers fall back to registration order
        return []
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return list(order)


# ------------------------------------------------------------------------------------------------- registry
ADAPTERS: list[type[BackboneAdapter]] = []
_BOUND: "weakref.WeakKeyDictionary[torch.nn.Module, BackboneAdapter]" = weakref.WeakKeyDictionary()


def register_adapter(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
    """Class decorator: later registrations are more specific and are tried first."""
    ADAPTERS.insert(0, cls)
    return cls


def adapter_class_for(model) -> type[BackboneAdapter]:
    return next((cls for cls in ADAPTERS if cls.matches(model)), BackboneAdapter)


def adapter_for(model, **bind) -> BackboneAdapter:
    """The adapter bound to ``model`` (made and remembered on first use); ``bind`` (image_processor) on creation."""
    adapter = _BOUND.get(model)
    if adapter is None or bind:
        adapter = adapter_class_for(model)(model, **bind)
        _BOUND[model] = adapter
    return adapter


def build_layer_map(model: torch.nn.Module, layer_regex: str | None = None) -> LayerMap:
    """The depth groups of ``model`` (a TimmWrapper, a transformers classifier, a bare timm model or any module)."""
    return adapter_for(model).layer_map(layer_regex)
