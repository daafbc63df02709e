"""Which engine runs the job (one process, DDP, DeepSpeed ZeRO, FSDP) and which transfer-plan features it supports.

`accelerate launch --config_file X recipes/finetune.py` chooses the engine; nothing in the job changes with it.
The engines differ in what they allow a transfer plan to do once they hold the model, so the support of every
engine x feature pair is written down ONCE, in `SUPPORT`: `check_engine` refuses an unsupported combination in one
line before any data or model is loaded, and `support_table()` renders the same table for docs/scale.md.

The engine is read from what accelerate itself reads: the `TrainingArguments` (``--deepspeed``, ``--fsdp`` /
``--fsdp_config``, ``--bf16`` / ``--fp16``) and the variables `accelerate launch` exports (``ACCELERATE_USE_DEEPSPEED``,
``ACCELERATE_DEEPSPEED_*``, ``ACCELERATE_USE_FSDP``, ``FSDP_*``, ``ACCELERATE_MIXED_PRECISION``, ``WORLD_SIZE``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Mapping

from .engine_support import (ENGINES, FEATURES, SETTING_REFUSALS, SUPPORT, Support, refusal_table,  # noqa: F401
                             support_table)
from .errors import TransferError

# ------------------------------------------------------------------------------------------------- the engine
@dataclass(frozen=True)
class Engine:
    """What runs the job: ``kind`` one of single, ddp, deepspeed, fsdp, with the settings that matter to the plan."""

    kind: str = "single"
    processes: int = 1
    mixed_precision: str = "no"
    zero_stage: int | None = None
    zero3_init: bool = False
    deepspeed_config: dict = field(default_factory=dict, compare=False, repr=False)
    fsdp_version: int | None = None
    use_orig_params: bool = True
    cpu_ram_efficient_loading: bool = False
    gpus_per_process: int = 1  # over 1 in a single process: Trainer's nn.DataParallel

    @property
    def key(self) -> str:
        """The row of `SUPPORT`."""
        if self.kind == "deepspeed":
            return "zero3" if self.zero_stage == 3 else "zero1_2"
        if self.kind == "fsdp":
            return f"fsdp{self.fsdp_version or 1}"
        return self.kind

    @property
    def trains_16_bit_copies(self) -> bool:
        """DeepSpeed under bf16/fp16 trains 16-bit copies of the weights (what never trains must be restored)."""
        return self.kind == "deepspeed" and self.mixed_precision in ("bf16", "fp16")

    def describe(self) -> str:
        name = {"single": "one process", "ddp": "DDP", "deepspeed": f"DeepSpeed ZeRO-{self.zero_stage}",
                "fsdp": f"FSDP v{self.fsdp_version}"}[self.kind]
        parts = [name] + ([f"{self.processes} processes"] if self.processes > 1 else [])
        parts.append("fp32" if self.mixed_precision in ("no", "", None) else self.mixed_precision)
        return ", ".join(parts)


def _true(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def _read_json(source) -> dict:
    if isinstance(source, Mapping):
        return dict(source)
    try:
        with open(source) as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise TransferError(f"cannot read the DeepSpeed config {source!r} ({err}); pass a JSON file") from None


def _deepspeed_engine(args, env: Mapping[str, str]) -> tuple[dict, bool] | None:
    """(the DeepSpeed config, whether ZeRO-3 init is on), or None when DeepSpeed is not in use."""
    plugin = getattr(args, "deepspeed_plugin", None)
    given = getattr(args, "deepspeed", None)
    if plugin is not None:  # TrainingArguments built it from --deepspeed or from accelerate's variables
        config = dict(plugin.deepspeed_config)
        stage = (config.get("zero_optimization") or {}).get("stage")
        # --deepspeed makes transformers load every model under zero.Init when the stage is 3
        return config, bool(plugin.zero3_init_flag) or (bool(given) and stage == 3)
    if given:
        config = _read_json(given)
        return config, (config.get("zero_optimization") or {}).get("stage") == 3
    if not _true(env.get("ACCELERATE_USE_DEEPSPEED", "false")):
        return None
    path = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    config = _read_json(path) if path and path != "none" else {}
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") in (None, "auto"):
        zero["stage"] = int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    gather = "stage3_gather_16bit_weights_on_model_save"
    if zero.get(gather) in (None, "auto"):
        zero[gather] = _true(env.get("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "false"))
    zero3_init = _true(env.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", str(zero["stage"] == 3)))  # accelerate's default
    return config, zero3_init and zero["stage"] == 3


def detect_engine(args=None, env: Mapping[str, str] | None = None) -> Engine:
    """The engine `Trainer` will build from ``args`` (TrainingArguments) and the launcher's variables ``env``."""
    env = os.environ if env is None else env
    processes = int(env.get("WORLD_SIZE", "1") or 1)
    precision = str(getattr(args, "mixed_precision", None) or env.get("ACCELERATE_MIXED_PRECISION", "no"))
    if args is not None and (getattr(args, "bf16", False) or getattr(args, "fp16", False)):
        precision = "bf16" if args.bf16 else "fp16"
    common = {"processes": processes, "mixed_precision": precision}
    deepspeed = _deepspeed_engine(args, env)
    if deepspeed is not None:
        config, zero3_init = deepspeed
        stage = int((config.get("zero_optimization") or {}).get("stage", 0) or 0)
        return Engine("deepspeed", zero_stage=stage, zero3_init=zero3_init, deepspeed_config=config, **common)
    plugin_args = getattr(args, "fsdp_plugin_args", None)
    if plugin_args:
        return Engine("fsdp", fsdp_version=int(plugin_args.get("fsdp_version", 2)),
                      use_orig_params=bool(plugin_args.get("use_orig_params", True)),
                      cpu_ram_efficient_loading=bool(plugin_args.get("cpu_ram_efficient_loading", False)), **common)
    if _true(env.get("ACCELERATE_USE_FSDP", "false")):
        return Engine("fsdp", fsdp_version=int(env.get("FSDP_VERSION", "1")),
                      use_orig_params=_true(env.get("FSDP_USE_ORIG_PARAMS", "false")),
                      cpu_ram_efficient_loading=_true(env.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")), **common)
    if processes > 1:
        return Engine("ddp", **common)
    return Engine("single", gpus_per_process=_gpus_in_one_process(args), **common)


def _gpus_in_one_process(args) -> int:
    """The GPUs Trainer gives one undistributed process: over 1, it wraps the model in `nn.DataParallel`.

    `TrainingArguments.n_gpu` is ``torch.cuda.device_count()`` when not distributed (1 under any launcher), read
    only when a GPU exists so CPU runs never set up devices here."""
    if args is None or not hasattr(args, "n_gpu") or getattr(args, "use_cpu", False):
        return 1
    import torch

    if torch.cuda.device_count() < 2:
        return 1
    return int(args.n_gpu or 1)


def mixed_precision_of_launcher(args=None, env: Mapping[str, str] | None = None) -> str | None:
    """"bf16" / "fp16" when the launcher asks for it (accelerate's ``mixed_precision`` exported as
    ACCELERATE_MIXED_PRECISION, or ``bf16`` / ``fp16`` ``enabled: true`` in a DeepSpeed config file), else None.

    accelerate writes ``bf16.enabled: true`` into DeepSpeed's config while `TrainingArguments.bf16` stays False, and
    transformers' `deepspeed_init` then refuses the mismatch after data and model have loaded: the arguments must
    take the launcher's precision (`TransferTrainingArguments` does)."""
    env = os.environ if env is None else env
    found = []
    launcher = str(env.get("ACCELERATE_MIXED_PRECISION", "no")).lower()
    if launcher in ("bf16", "fp16"):
        found.append(launcher)
    source = getattr(args, "deepspeed", None)
    if not source and _true(env.get("ACCELERATE_USE_DEEPSPEED", "false")):
        path = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
        source = path if path and path != "none" else None
    if source:
        config = _read_json(source)
        found += [key for key in ("bf16", "fp16") if _true((config.get(key) or {}).get("enabled", False))]
    if len(set(found)) > 1:
        raise TransferError(f"the launcher asks for both {' and '.join(sorted(set(found)))}; keep one mixed precision "
                            "in the accelerate or DeepSpeed config")
    return found[0] if found else None


def align_mixed_precision(args, env: Mapping[str, str] | None = None) -> str | None:
    """Set ``args.bf16`` / ``args.fp16`` from the launcher (`mixed_precision_of_launcher`); refuse a contradiction.
    -> the precision set, or None. Call before `TrainingArguments.__post_init__` builds the DeepSpeed plugin."""
    wanted = mixed_precision_of_launcher(args, env)
    if wanted is None:
        return None
    other = "fp16" if wanted == "bf16" else "bf16"
    if getattr(args, other, False):
        raise TransferError(SETTING_REFUSALS["precision_conflict"])
    setattr(args, wanted, True)
    return wanted


# -------------------------------------------------------------------------------------------------- the check
def features_used(config) -> list[str]:
    """The plan features a `TransferConfig` asks for (known before the model loads): its strategy says."""
    return config.strategy_object.engine_features(config)


def setting_refusals(engine: Engine, config=None) -> list[str]:
    """Keys of `SETTING_REFUSALS` that apply to this engine (and plan)."""
    found = []
    if engine.kind == "deepspeed":
        ds = engine.deepspeed_config
        zero = ds.get("zero_optimization") or {}
        if "optimizer" in ds:
            found.append("deepspeed_optimizer")
        if "scheduler" in ds:
            found.append("deepspeed_scheduler")
        if engine.zero_stage == 3 and engine.zero3_init:
            found.append("zero3_init")
        if engine.zero_stage == 3 and not _true(zero.get("stage3_gather_16bit_weights_on_model_save", False)):
            found.append("zero3_gather")
        unfreezes = config is not None and "unfreeze" in features_used(config)
        if unfreezes and engine.zero_stage != 3 and str(zero.get("ignore_unused_parameters", True)).lower() == "false":
            found.append("zero_unused")
    if engine.kind == "single" and engine.gpus_per_process > 1:
        found.append("data_parallel")
    if engine.kind == "fsdp":
        if engine.fsdp_version == 1 and not engine.use_orig_params:
            found.append("fsdp1_flat")
        if engine.cpu_ram_efficient_loading:
            found.append("fsdp_ram_efficient")
    return found


def check_engine(engine: Engine, config) -> None:
    """Refuse, in one line, an engine setting or an engine x plan feature pair that would train a different model
    than the plan says (call before loading data or the model)."""
    for key in setting_refusals(engine, config):
        raise TransferError(SETTING_REFUSALS[key])
    for feature in features_used(config):
        support = SUPPORT[(engine.key, feature)]
        if not support.works:
            flags = config.strategy_object.flag_for(feature, config)
            raise TransferError(f"{flags} under {ENGINES[engine.key]}: {support.how}")


def deepspeed_install_problem(args, env: Mapping[str, str] | None = None) -> str | None:
    """DeepSpeed asked for without the package: TrainingArguments would fail with a packaging traceback."""
    import importlib.util

    env = os.environ if env is None else env
    if getattr(args, "deepspeed", None):
        asked, instead = "--deepspeed", "leave --deepspeed out"
    elif _true(env.get("ACCELERATE_USE_DEEPSPEED", "false")):
        asked, instead = "a DeepSpeed accelerate config", "launch with another config"
    else:
        return None
    if importlib.util.find_spec("deepspeed") is not None:
        return None
    return (f"{asked} needs the deepspeed package: pip install -e '.[deepspeed]' (built from source on a machine with "
            f"a CUDA toolkit), or {instead}")


# ------------------------------------------------------------------------------------- BatchNorm under 16 bits
def needs_float32_batchnorm(engine: Engine) -> bool:
    """Engines that hand BatchNorm 16-bit weights next to float32 running statistics: DeepSpeed under bf16 / fp16
    (it casts parameters, keeps buffers) and FSDP under bf16 (`MixedPrecisionPolicy(param_dtype=bf16)`).
    `torch.batch_norm` refuses that mix ("expected scalar type BFloat16 but found Float", seen with DeepSpeed ZeRO-2
    on CPU; reported for the CUDA NCHW backward, torchtitan #674)."""
    return engine.kind in ("deepspeed", "fsdp") and engine.mixed_precision in ("bf16", "fp16")


def keep_batchnorm_float32(model) -> int:
    """Compute every BatchNorm of ``model`` in float32 whatever dtype its weights are cast to (input, weight and
    statistics in float32, the output back in the input's dtype), as autocast does for BatchNorm. Weights stay
    where the engine keeps them (its 16-bit copy, its optimizer's float32 master); gradients flow through the casts.
    Covers torch's BatchNorm1d/2d/3d and timm's BatchNormAct2d (norm, then its dropout and activation).
    -> the number of modules changed."""
    import types

    import torch

    changed = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or isinstance(module, torch.nn.SyncBatchNorm):
            continue
        plain = type(module).forward in (torch.nn.modules.batchnorm._BatchNorm.forward,)
        timm_act = hasattr(module, "act") and hasattr(module, "drop")  # timm BatchNormAct2d: bn, drop, act
        if not (plain or timm_act):
            continue
        module.forward = types.MethodType(_float32_batchnorm_forward, module)
        changed += 1
    return changed


def _float32_batchnorm_forward(self, input):
    import torch
    import torch.nn.functional as F

    # the arithmetic of torch's _BatchNorm.forward (momentum None: cumulative average), in float32
    factor = 0.0 if self.momentum is None else self.momentum
    if self.training and self.track_running_stats and self.num_batches_tracked is not None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
    batch_stats = self.training or (self.running_mean is None and self.running_var is None)
    tracked = not self.training or self.track_running_stats
    for name in ("running_mean", "running_var"):  # an engine that cast the buffers too: back to float32, once
        buffer = getattr(self, name)
        if buffer is not None and buffer.dtype != torch.float32:
            setattr(self, name, buffer.float())
    out = F.batch_norm(input.float(), self.running_mean if tracked else None, self.running_var if tracked else None,
                       None if self.weight is None else self.weight.float(),
                       None if self.bias is None else self.bias.float(), batch_stats, factor, self.eps).to(input.dtype)
    if hasattr(self, "act") and hasattr(self, "drop"):
        out = self.act(self.drop(out))
    return out


# ------------------------------------------------------------------------- what engines do to the model it trains
# Modules that wrap a model for an engine put their own name into every parameter path: FSDP v1
# (`_fsdp_wrapped_module.`), activation checkpointing (`_checkpoint_wrapped_module.`), torch.compile (`_orig_mod.`).
WRAPPER_NAME_PARTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})


def plan_name(name: str) -> str:
    """A parameter or module path as the plan knows it: without the parts engine wrappers insert."""
    if not any(part in name for part in WRAPPER_NAME_PARTS):
        return name
    return ".".join(part for part in name.split(".") if part not in WRAPPER_NAME_PARTS)


def plan_named_parameters(model):
    """``model.named_parameters()`` under the plan's names, for a bare model or one an engine wrapped (FSDP v1)."""
    return ((plan_name(n), p) for n, p in model.named_parameters())


def plan_named_modules(model):
    return ((plan_name(n), m) for n, m in model.named_modules())


def parameter_count(parameter) -> int:
    """Values in a parameter; a DeepSpeed ZeRO-3 parameter holds only its shard and records the full size in ds_numel."""
    return getattr(parameter, "ds_numel", parameter.numel())


def hold_pending_groups(optimizer, epoch: int) -> None:
    """Keep parameters that have not unfrozen yet exactly as they are, even where an engine gives them a gradient.

    One process, DDP and FSDP leave their gradient None, so the optimizer skips them. DeepSpeed ZeRO-1/2 fills
    missing gradients with zeros: AdamW would still decay those weights and count steps for them, so their group's
    weight decay is held at 0 until its epoch (zero gradients then move nothing), and its optimizer state is dropped
    when it starts to train (fresh moments and step count, as if it had just joined). The hold is a key of the group,
    so it is saved in checkpoints and a resumed run releases it the same way.
    """
    state = optimizer.state
    for group in optimizer.param_groups:
        start = group.get("trains_from_epoch")
        if start is None:
            continue
        if start > epoch and "held_weight_decay" not in group:
            group["held_weight_decay"], group["weight_decay"] = group["weight_decay"], 0.0
        elif start <= epoch and "held_weight_decay" in group:
            group["weight_decay"] = group.pop("held_weight_decay")
            for param in group["params"]:
                state.pop(param, None)


def untrained_weights(plan, model) -> dict:
    """CPU copies of the parameters the plan never trains and of the BatchNorm statistics it never updates: what a
    16-bit engine copy would round, restored into the saved folder (`saving.trained_weights`)."""
    never = {n for g in plan.groups if g.frozen for n in g.params}
    frozen_bn = set(plan.frozen_batchnorm_names(model))
    never |= {n for n, _ in model.named_buffers() if n.rpartition(".")[0] in frozen_bn}
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items() if name in never}


def gathers_weights(trainer) -> bool:
    """Whether the trainer's engine shards or copies the weights, so saving must gather them (DeepSpeed, FSDP)."""
    return bool(getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False))


def holds_shard_placeholders(model) -> bool:
    """Whether ZeRO-3 or FSDP left empty placeholders in ``model`` (its real weights live sharded elsewhere)."""
    return any(p.numel() == 0 for p in model.parameters())
