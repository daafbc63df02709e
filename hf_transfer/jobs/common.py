"""What both jobs do first: load the data and the backbone, set the input size, attach the transforms."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arguments import DataArguments, ModelArguments
from ..backbones import load_backbone_with_adapter
from ..resolution import check_input_size
from ..runtime import say
from ..transforms import resolve_augmentation, with_transforms

if TYPE_CHECKING:
    from ..training_args import TransferTrainingArguments


def load_sized_backbone(model_args: ModelArguments, labels, image_size: int | None, pretrained: bool = True,
                        name: str | None = None, report: bool = True):
    """(model, adapter): the backbone ``name`` (default: --model_name_or_path) with a head for ``labels``, at the
    input size ``image_size`` (None: the backbone's own), its preprocessing set to match."""
    hub_kwargs = {"revision": model_args.model_revision, "cache_dir": model_args.cache_dir}
    if model_args.token:
        hub_kwargs["token"] = model_args.token
    model, adapter = load_backbone_with_adapter(name or model_args.model_name_or_path, labels=labels,
                                                pretrained=pretrained, trust_remote_code=model_args.trust_remote_code,
                                                **hub_kwargs)
    if report and adapter.note:
        say(adapter.note)
    if image_size:  # ViTs need resampled position embeddings: say what the size change did to the model
        check_input_size(model, int(image_size), forward=False)  # the size change below runs the forward check
        change = adapter.change_input_size(int(image_size))
        if report:
            say(change)
    adapter.set_preprocessing(image_size)
    return model, adapter


def prepare(model_args: ModelArguments, data_args: DataArguments, training_args: TransferTrainingArguments,
            recipe: str | None = None, pretrained: bool | None = None):
    """Load data and backbone and attach transforms; shared by fine-tuning and probing.

    The jobs name the output folder themselves, before anything loads (``recipe`` is no longer needed here; it is
    accepted so that callers need no change)."""
    data = data_args.load(training_args.seed, model_args, allow_streaming=recipe == "finetune")
    image_size = model_args.image_size or data.suggested_image_size
    model, adapter = load_sized_backbone(model_args, data.labels, image_size,
                                         pretrained=(not model_args.no_pretrained) if pretrained is None else pretrained)
    cfg = adapter.data_config()
    # run_finetune resolves `auto` from its epochs; any other caller (probing) gets no augmentation for `auto`.
    splits = with_transforms(data.splits, data, cfg, image_size=image_size,
                             augmentation=resolve_augmentation(data_args.augmentation, 0))
    return data, model, splits, int(image_size or cfg["input_size"][-1])
