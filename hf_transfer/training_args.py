"""`TrainingArguments` with defaults for fine-tuning vision backbones.

Kept apart from `arguments.py`: importing `transformers.TrainingArguments` loads the Trainer machinery (and peft
when installed), about 3 s that the probe path, which never trains with Trainer, should not pay.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .engines import align_mixed_precision, deepspeed_install_problem
from .errors import TransferError
from .saving import mark_default_output_dir


@dataclass
class TransferTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults that suit fine-tuning a pretrained vision backbone."""

    output_dir: str | None = field(default=None, metadata={"help": "Default: outputs/<recipe>-<model>-<dataset>."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a previous run in --output_dir (its model, results and checkpoints); "
                                         "without it such a folder is refused."}
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the new head (pretrained parts: x --backbone_lr_multiplier); default 1e-2 "
                          "for BatchNorm CNNs, 1e-3 for transformers and other backbones."},
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Eval batch size per device."})
    weight_decay: float = field(default=0.01, metadata={"help": "Weight decay (never on biases or norm weights)."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps (a float below 1: share of all steps)."})
    # No gradient clipping by default, as in timm's train.py. Trainer's 1.0 clipped nearly every step of the embedded
    # default (gradient norms 1-24 with the head at 1e-2) and cost accuracy: 0.968 against 0.980 without (one epoch,
    # `python recipes/finetune.py --max_grad_norm 0`, same seed). Set it for unstable runs (large lrs, fp16).
    max_grad_norm: float = field(default=0.0, metadata={"help": "Clip the gradient norm to this (0: no clipping)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."})
    eval_steps: float | None = field(
        default=None, metadata={"help": "Evaluate every N steps; alone, it implies --eval_strategy steps."}
    )
    save_strategy: str = field(
        default="no",
        metadata={"help": "When to checkpoint: no (only the final model: a killed run keeps nothing), steps, epoch "
                          "or best."},
    )
    save_steps: float = field(
        default=500, metadata={"help": "Checkpoint every N steps; alone, it implies --save_strategy steps."}
    )
    logging_steps: float = field(default=20, metadata={"help": "Log every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: transforms read raw columns."})
    dataloader_num_workers: int | None = field(
        # default: this process's share of the cores when images are decoded per step, none when they fit in memory
        default=None, metadata={"help": "Data-loading worker processes (default: auto)."},
    )
    seed: int = field(default=42, metadata={"help": "Seed for splits, init and shuffling."})

    def __post_init__(self):
        mark_default_output_dir(self)
        problem = deepspeed_install_problem(self)  # else a packaging traceback from TrainingArguments
        if problem:
            raise TransferError(problem)
        if self.per_device_train_batch_size < 1 or self.per_device_eval_batch_size < 1:
            raise TransferError(f"--per_device_train_batch_size {self.per_device_train_batch_size} / --per_device_eval_"
                                f"batch_size {self.per_device_eval_batch_size}: batch sizes must be >= 1")
        if self.num_train_epochs <= 0 and (self.max_steps is None or self.max_steps <= 0):
            raise TransferError(f"--num_train_epochs {self.num_train_epochs:g} trains nothing; pass a positive number "
                                "of epochs (or --max_steps)")
        # The launcher's mixed precision (accelerate config, DeepSpeed config) becomes --bf16 / --fp16: transformers'
        # DeepSpeed set-up refuses a config whose bf16 is on while the arguments say off.
        align_mixed_precision(self)
        # None: decided once the job knows whether images are decoded per step (fastdata.resolve_loader_workers)
        self.dataloader_num_workers_was_defaulted = self.dataloader_num_workers is None
        if self.dataloader_num_workers is None:
            self.dataloader_num_workers = 0
        super().__post_init__()
        problem = missing_tracker(self.report_to)
        if problem:
            raise TransferError(problem)
        from .runtime import has_accelerator

        if not has_accelerator():
            # Pinned memory only speeds copies to an accelerator; without one torch warns once per DataLoader.
            self.dataloader_pin_memory = False


# --report_to name -> the packages that provide it (any one will do) and how to install it. Trainer would import the
# tracker only when it builds its callbacks, after the data and the model have loaded, and fail with a traceback.
TRACKERS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install 'hf-transfer-vision[tensorboard]'"),
    "wandb": (("wandb",), "pip install wandb"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "comet_ml": (("comet_ml",), "pip install comet_ml"),
    "clearml": (("clearml",), "pip install clearml"),
    "dvclive": (("dvclive",), "pip install dvclive"),
    "neptune": (("neptune",), "pip install neptune"),
    "codecarbon": (("codecarbon",), "pip install codecarbon"),
    "trackio": (("trackio",), "pip install trackio"),
    "swanlab": (("swanlab",), "pip install swanlab"),
}


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def missing_tracker(report_to) -> str | None:
    """The one-line problem when a --report_to tracker's package is not installed, else None."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        packages, install = TRACKERS.get(name, ((), ""))
        if packages and not any(_installed(package) for package in packages):
            return (f"--report_to {name} needs the {packages[0]} package, which is not installed: {install}, "
                    "or drop --report_to")
    return None
