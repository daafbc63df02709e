"""Dataclass arguments shared by the recipes and the CLI (parsed with `HfArgumentParser`)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

from .backbones import DEFAULT_BACKBONE
from .data import DEFAULT_DATASET
from .saving import mark_default_output_dir
from .transforms import AUGMENTATION_PRESETS


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=DEFAULT_BACKBONE,
        metadata={"help": "embedded:efficientnet_lite0 (default) or embedded:efficientnet_lite1, a local folder, a timm "
                          "name or timm/... Hub id, or a transformers Hub id."},
    )
    no_pretrained: bool = field(default=False, metadata={"help": "Random initial weights (train from scratch)."})
    image_size: int | None = field(
        default=None,
        metadata={"help": "Input resolution; default: the dataset's suggestion for embedded sets, else the backbone's."},
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})
    token: str | None = field(default=None, metadata={"help": "Hub token (never printed); default: the logged-in one."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow Hub code to run (only for repos you trust)."})


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": f"Hub dataset id, a local folder, or an embedded set (default {DEFAULT_DATASET}; "
                          "also embedded:digits, embedded:lfw)"},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder with one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Validation image folder (same classes)."})
    test_dir: str | None = field(default=None, metadata={"help": "Test image folder (same classes)."})
    image_column_name: str | None = field(default=None, metadata={"help": "Image column (detected when not given)."})
    label_column_name: str | None = field(default=None, metadata={"help": "Label column (detected when not given)."})
    validation_split: float = field(
        default=0.1, metadata={"help": "Stratified share of train held out when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate train (debugging, quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation."})
    augmentation: str = field(
        default="auto", metadata={"help": f"Training augmentation preset: auto (none under 3 epochs, else gentle), "
                                          f"{', '.join(AUGMENTATION_PRESETS)}."}
    )
    on_bad_image: str = field(
        default="error",
        metadata={"help": "What the data check does with unreadable images (zero bytes, not an image, truncated, over "
                          "the pixel limit): error (list them all and stop) or skip (train without them; the list "
                          "goes to bad_images.json in the output folder)."},
    )
    data_check: str = field(
        default="full",
        metadata={"help": "Check images: full|sample|off."},
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the dataset (needs --max_steps)."},
    )
    max_image_pixels: int | None = field(
        default=None,
        metadata={"help": "Raise PIL's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS) for datasets of very "
                          "large images."},
    )

    @property
    def source_name(self) -> str:
        """What the data is called in default output folder names, known before anything is loaded."""
        return self.train_dir or self.dataset_name or DEFAULT_DATASET

    def load(self, seed: int, model_args: ModelArguments | None = None, allow_streaming: bool = False):
        from .data import load_image_classification_data
        from .errors import TransferError

        if self.max_image_pixels is not None:
            from PIL import Image

            # A process-wide setting in PIL: the data check and the training transforms both read it.
            Image.MAX_IMAGE_PIXELS = self.max_image_pixels
        if self.streaming:
            if not allow_streaming:
                raise TransferError("--streaming is for fine-tuning (finetune); linear probes, cross-validation and the "
                                    "advisor read the whole dataset: drop --streaming")
            from .streaming import load_streaming_data

            return load_streaming_data(self, seed, model_args)
        return load_image_classification_data(
            self.dataset_name,
            dataset_config_name=self.dataset_config_name,
            train_dir=self.train_dir,
            validation_dir=self.validation_dir,
            test_dir=self.test_dir,
            image_column_name=self.image_column_name,
            label_column_name=self.label_column_name,
            validation_split=self.validation_split,
            seed=seed,
            max_train_samples=self.max_train_samples,
            max_eval_samples=self.max_eval_samples,
            cache_dir=model_args.cache_dir if model_args else None,
            token=model_args.token if model_args else None,
            trust_remote_code=model_args.trust_remote_code if model_args else False,
            on_bad_image=self.on_bad_image,
            data_check=self.data_check,
        )


def _transfer_arguments() -> type:
    """`TransferArguments`: every `TransferConfig` option that is a flag (declared there once, with its help), plus
    the flags that are not part of a plan (the time budget, how a LoRA run is written)."""
    import typing

    from .config import TransferConfig

    hints = typing.get_type_hints(TransferConfig)
    specs = []
    for option in dataclasses.fields(TransferConfig):
        if not option.metadata.get("flag", True):
            continue
        default = None if option.name == "lora_learning_rate" else option.default  # None: the config's default
        hint = float | None if option.name == "lora_learning_rate" else hints[option.name]
        specs.append((option.name, hint, field(default=default, metadata=dict(option.metadata))))
        if option.name == "layer_regex":
            specs.append(("time_budget", float | None, field(default=None, metadata={
                "help": "Seconds for the run: training stops cleanly in time to evaluate and save."})))
    specs.append(("lora_adapter_only", bool, field(default=False, metadata={
        "help": "Write adapter/ alone, without the merged model (LoRA folded into the weights, which pipeline() loads)."})))

    def to_config(self, training_args, learning_rate: float | None = None):
        """The `TransferConfig` of this run (the head's rate and weight decay from ``training_args``)."""
        values = {name: getattr(self, name) for name in TransferConfig.__dataclass_fields__ if hasattr(self, name)}
        if values["lora_learning_rate"] is None:
            del values["lora_learning_rate"]
        return TransferConfig(**values, learning_rate=next(lr for lr in (learning_rate, training_args.learning_rate, 1e-3) if lr is not None),
                              weight_decay=training_args.weight_decay)

    return dataclasses.make_dataclass(
        "TransferArguments", specs, namespace={"to_config": to_config, "__module__": __name__, "__doc__":
                                               "How to transfer: what trains when, BatchNorm, re-initialization and "
                                               "layer-wise learning rates (the fields of `TransferConfig`)."})


TransferArguments = _transfer_arguments()


def parse_args(dataclass_types, args: list[str] | None = None, prog: str | None = None):
    """Parse command-line flags, or a YAML/JSON config file first (flags after it override its values).

    Every bad input is a one-line `TransferError`; `--help` lists the flags people change, `--help_all` all of them.
    """
    from .argument_parser import RecipeArgumentParser, first_sentence, is_config_file
    from .errors import TransferError

    parser = RecipeArgumentParser(dataclass_types, prog=prog)
    argv = list(sys.argv[1:] if args is None else args)
    if argv and is_config_file(argv[0]):
        argv = parser.read_config(argv[0]) + argv[1:]
    try:
        return parser.parse_into_dataclasses(argv)
    except TransferError:
        raise
    except ValueError as err:  # TrainingArguments.__post_init__ rejects bad values and combinations of flags
        raise TransferError(_name_the_flag(first_sentence(err), argv)) from err


def _name_the_flag(message: str, argv: list[str]) -> str:
    """TrainingArguments says "sometimes is not a valid IntervalStrategy": put the flag given that value in front."""
    flags = [flag for flag, value in zip(argv, argv[1:]) if flag.startswith("--") and message.startswith(f"{value} ")]
    return f"{flags[-1]}: {message}" if flags and not message.startswith("--") else message


def finetune_argument_types() -> tuple:
    """The dataclasses `recipes/finetune.py` and `hf-transfer finetune` parse, in order."""
    from .training_args import TransferTrainingArguments  # imports Trainer machinery (and peft): only when training

    return (ModelArguments, DataArguments, TransferTrainingArguments, TransferArguments)
