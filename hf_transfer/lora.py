"""LoRA (``--strategy lora``): choose the layers, wrap the backbone with peft, write the adapter and the merged model.

In the fine-tuning job: `wrap_with_lora(model, config, source)` after loading (and after ``--head_init_from``),
before the plan is built. The plan (`plan.py`) then trains exactly the LoRA weights, at ``--lora_learning_rate``,
and peft's copy of the head (``modules_to_save``) at the head's rate; every pretrained weight is frozen, BatchNorm
statistics included
(the adapter holds no BatchNorm state, so a reloaded adapter predicts exactly like the trained model).
`save_lora_output` writes ``adapter/`` (adapter_config.json, adapter_model.safetensors and what is needed to rebuild
the base) and, by default, the merged model in the layout of a normal fine-tune; `load_lora` rebuilds the trained
model from ``adapter/``.

Which layers: the backbone adapter's `lora_targets()` (attention projections for ViTs, the dense layers after the
stem for CNNs) or ``--lora_target_modules``, minus the head (trained in full) and minus every layer the ``--freeze``
rule freezes (``--freeze fraction:0.5``: LoRA in the second half only). peft is imported only here, and only
when LoRA is asked for.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import torch

from .backbones import adapter_for, load_backbone_with_adapter
from .backbones.adapter import is_plain_layer
from .backbones.peft_adapter import PEFT_PREFIX, base_param_name, is_lora_param, is_saved_copy_param
from .engines import holds_shard_placeholders
from .errors import TransferError
from .layers import frozen_by_rule
from .runtime import say
from .saving import save_model_folder, write_json

ADAPTER_DIR = "adapter"
BASE_FILE = "hf_transfer_base.json"  # beside the adapter: the base model's source, labels and input size
LORA_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Embedding)  # what peft adapts


def require_peft():
    try:
        import peft
    except ImportError:
        raise TransferError('--strategy lora needs peft, which is not installed; pip install -e ".[peft]" '
                            "(or pip install peft)") from None
    return peft


# ----------------------------------------------------------------------------------------------- targets
def resolve_targets(model: torch.nn.Module, config) -> tuple[list[str], str]:
    """Full names of the modules that get LoRA and a line saying how they were chosen.

    The family default or ``--lora_target_modules``; the head never (it trains in full); layers frozen by
    ``--freeze`` never (LoRA there would train what the rule freezes).
    """
    adapter = adapter_for(model)
    layer_map = adapter.layer_map(config.layer_regex)
    head = set(layer_map.head.param_names)
    if config.lora_target_modules:
        targets, rule = _match_target_spec(model, config.lora_target_modules, head)
    else:
        targets, rule = adapter.lora_targets()
    modules = dict(model.named_modules())
    unmergeable = [t for t in targets if isinstance(modules[t], (torch.nn.Linear, torch.nn.Conv2d))
                   and not is_plain_layer(modules[t])]
    if unmergeable:
        raise TransferError(f"--lora_target_modules names {unmergeable[0]}, a {type(modules[unmergeable[0]]).__name__} "
                            "that transforms its weight in its forward (weight standardization, dynamic padding): its "
                            "merged LoRA would not be the trained model; leave it out of --lora_target_modules")
    frozen = frozen_by_rule(config.freeze, layer_map, [n for n, _ in model.named_parameters()])
    kept = [t for t in targets if not any(f"{t}.{p}" in frozen for p, _ in modules[t].named_parameters(recurse=False))]
    if not kept:
        raise TransferError(f"--freeze {config.freeze!r} freezes every layer LoRA would adapt ({len(targets)} modules: "
                            f"{rule}); freeze fewer depth groups or choose other --lora_target_modules")
    if len(kept) < len(targets):
        first = min(layer_map.depth_of(_own_params(modules[t], t)[0]) for t in kept)
        rule += (f"; --freeze {config.freeze} keeps LoRA out of {len(targets) - len(kept)} of them (LoRA from depth "
                 f"{first}, {layer_map.groups[first].name}, on)")
    return kept, rule


def _own_params(module: torch.nn.Module, name: str) -> list[str]:
    return [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]


def _match_target_spec(model: torch.nn.Module, spec: str, head: set[str]) -> tuple[list[str], str]:
    """``--lora_target_modules``: names or name endings (peft's rule: ``qkv`` matches ``blocks.0.attn.qkv``), or
    ``regex:PATTERN`` (searched in full module names; of what it matches, the layers peft adapts are kept)."""
    modules = dict(model.named_modules())
    chosen: dict[str, None] = {}
    skipped_head = 0
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item.startswith("regex:"):
            try:
                pattern = re.compile(item.removeprefix("regex:"))
            except re.error as err:
                raise TransferError(f"--lora_target_modules {item!r}: invalid regular expression ({err})") from None
            matched = [n for n, m in modules.items() if n and pattern.search(n) and isinstance(m, LORA_LAYERS)]
        else:
            matched = [n for n in modules if n == item or n.endswith("." + item)]
            wrong = [n for n in matched if not isinstance(modules[n], LORA_LAYERS)]
            if wrong:
                raise TransferError(f"--lora_target_modules {item!r} names {wrong[0]}, a {type(modules[wrong[0]]).__name__}; "
                                    "LoRA adapts Linear, Conv and Embedding layers: name those (e.g. attn.qkv, not attn)")
        if not matched:
            some = ", ".join(n for n, m in list(modules.items())[1:] if isinstance(m, LORA_LAYERS))[:120]
            raise TransferError(f"--lora_target_modules {item!r} matches no Linear/Conv/Embedding layer of "
                                f"{type(model).__name__}; layer names look like: {some} …")
        for name in matched:
            if any(p in head for p in _own_params(modules[name], name)):
                skipped_head += 1  # the head trains in full
            else:
                chosen[name] = None
    if not chosen:
        raise TransferError(f"--lora_target_modules {spec!r} matches only the head, which trains in full anyway; name "
                            "layers of the backbone")
    return list(chosen), f"--lora_target_modules {spec}" + (f" ({skipped_head} head layer(s) left to full training)"
                                                             if skipped_head else "")


# ------------------------------------------------------------------------------------------------ wrapping
def wrap_with_lora(model: torch.nn.Module, config, source: str | None = None):
    """The peft model: LoRA on the chosen layers, the head in ``modules_to_save``; checked and reported.

    ``source`` (the --model_name_or_path) is recorded in the adapter's config, so the adapter names its base.
    """
    peft = require_peft()
    adapter = adapter_for(model)
    layer_map = adapter.layer_map(config.layer_regex)  # on the plain model: the peft model's map is read through it
    targets, rule = resolve_targets(model, config)
    head_modules = list(layer_map.head.module_names)
    lora_config = peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                  target_modules=targets, modules_to_save=head_modules, bias="none")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # peft asks transformers a deprecated question
        try:
            wrapped = peft.get_peft_model(model, lora_config)
        except (ValueError, TypeError) as err:
            raise TransferError(f"peft cannot put LoRA on {type(model).__name__} ({rule}): "
                                f"{str(err).strip().splitlines()[0][:200]}; choose other --lora_target_modules") from None
    if source is not None:
        wrapped.peft_config["default"].base_model_name_or_path = _portable_source(source)
    _check_wrapped(wrapped, targets, set(layer_map.head.param_names))
    _check_forward(wrapped, rule)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    say(f"LoRA r={config.lora_r} alpha={config.lora_alpha:g} dropout={config.lora_dropout:g} lr={config.lora_learning_rate:g} "
        f"on {len(targets)} modules: {rule}; head trained in full ({', '.join(head_modules)})"
        + (f" at lr {config.learning_rate:g}" if config.learning_rate is not None else "")
        + ("; BatchNorm keeps its pretrained statistics (the adapter holds no BatchNorm state)" if has_bn else ""))
    return wrapped


def _portable_source(source: str) -> str:
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else source


def _check_wrapped(wrapped, targets: list[str], head: set[str]) -> None:
    """peft matches names by their endings: make sure it adapted exactly the chosen layers and copied exactly the head."""
    names = [n for n, _ in wrapped.named_parameters()]
    adapted = {n.removeprefix(PEFT_PREFIX).rpartition(".lora_")[0] for n in names if is_lora_param(n)}
    copied = {base_param_name(n) for n in names if is_saved_copy_param(n)}
    if adapted != set(targets) or copied != head:
        extra = sorted((adapted ^ set(targets)) | (copied ^ head))
        raise TransferError(f"peft wrapped other layers than hf_transfer chose ({extra[0]}); pass --lora_target_modules "
                            "with full module names")


def _check_forward(wrapped, rule: str) -> None:
    """One eval forward at the model's input size: a LoRA branch that does not fit its layer fails here, in one line."""
    adapter = adapter_for(wrapped)
    size = int(adapter.data_config()["input_size"][-1])
    was_training = wrapped.training
    wrapped.eval()
    try:
        with torch.no_grad():
            adapter.run(torch.zeros(1, 3, size, size))
    except Exception as err:  # noqa: BLE001 - any failure: the wrapped model cannot run
        raise TransferError(f"the LoRA model does not run ({type(err).__name__}: "
                            f"{(str(err).strip().splitlines() or [''])[0][:160]}) with {rule}; choose other "
                            "--lora_target_modules") from None
    finally:
        wrapped.train(was_training)


# ------------------------------------------------------------------------------------------------- output
def save_lora_output(wrapped, folder, image_size: int | None = None, merge: bool = True, source: str | None = None) -> None:
    """Write ``folder/adapter/`` (peft's adapter files + the base's source, labels and input size) and, with ``merge``,
    the merged model in the layout of a normal fine-tune (pipeline() and timm's local-dir: load it). Without
    ``merge`` the folder keeps config.json and the preprocessing, so the model card and labels are still there."""
    folder = Path(folder)
    if holds_shard_placeholders(wrapped):  # merging them would write a broken model
        raise TransferError("the LoRA model's weights are sharded (DeepSpeed ZeRO-3 or FSDP), which saving a LoRA run "
                            "does not support yet; train LoRA with DDP (recipes/accelerate/multi_gpu.yaml): the adapter is small")
    base = wrapped.get_base_model()
    base_adapter = adapter_for(base)
    adapter_dir = folder / ADAPTER_DIR
    wrapped.save_pretrained(adapter_dir, safe_serialization=True)
    config = base.config
    labels = [config.id2label[i] for i in range(len(config.id2label))] if getattr(config, "id2label", None) else None
    source = source or wrapped.peft_config["default"].base_model_name_or_path
    write_json(adapter_dir / BASE_FILE, {"model_name_or_path": _portable_source(source) if source else None,
                                         "labels": labels, "image_size": image_size})
    if merge:
        merged = merged_model(wrapped)
        save_model_folder(merged, folder, image_size=image_size, timm_layout=True)
    else:
        config.save_pretrained(folder)
        processor = base_adapter.image_processor(image_size)
        if processor is not None:
            processor.save_pretrained(folder)


def merged_model(wrapped) -> torch.nn.Module:
    """A copy of the trained model with LoRA folded into its weights and the head's trained copy in place (plain
    modules, no peft); the trained peft model is left as it is."""
    base_adapter = adapter_for(wrapped.get_base_model())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        merged = copy.deepcopy(wrapped).merge_and_unload()
    merged = merged.to(memory_format=torch.contiguous_format)
    base_adapter.bind_copy(merged)  # the copy's adapter keeps the checkpoint's image processor
    return merged


def load_lora(folder, **hub_kwargs):
    """The trained LoRA model (a peft model, eval mode) from an output folder or its ``adapter/``: the base rebuilt
    from its recorded source, labels and input size, then the adapter loaded into it."""
    peft = require_peft()
    folder = Path(folder)
    adapter_dir = folder / ADAPTER_DIR if (folder / ADAPTER_DIR).is_dir() else folder
    info_file = adapter_dir / BASE_FILE
    if not (adapter_dir / "adapter_config.json").is_file() or not info_file.is_file():
        raise TransferError(f"{str(folder)!r} holds no hf_transfer LoRA adapter (adapter/adapter_config.json and "
                            f"{BASE_FILE}); pass the output folder of a --strategy lora run")
    info = json.loads(info_file.read_text())
    if not info.get("model_name_or_path"):
        raise TransferError(f"{info_file} does not name the base model; load it yourself and use "
                            "peft.PeftModel.from_pretrained(base, adapter_dir)")
    model, adapter = load_backbone_with_adapter(info["model_name_or_path"], labels=info.get("labels"), **hub_kwargs)
    if info.get("image_size"):
        adapter.change_input_size(int(info["image_size"]))  # what the job did before training (position embeddings)
        adapter.set_preprocessing(int(info["image_size"]))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return peft.PeftModel.from_pretrained(model, str(adapter_dir)).eval()
