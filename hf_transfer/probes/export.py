"""Export a linear probe as a model folder, and hand an exported probe's head to fine-tuning (LP-FT).

Pooled bottleneck: the backbone's own class, with the probe written into its head by the backbone adapter (every
classifier of twin heads, norms between the pooled feature and the linear made the identity), so the model's
logits are the probe's. Earlier depth: an ``hf_transfer_probe`` model (`modeling_probe.py`, written beside the
weights so the folder loads with ``trust_remote_code=True`` where hf_transfer is not installed).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..backbones import adapter_for
from ..errors import TransferError
from ..layers import LayerMap
from .estimators import ProbeResult

def _later_modules(layer_map: LayerMap, depth: int) -> list[str]:
    return [m for g in layer_map.groups if g.index > depth for m in g.module_names]


def export_probe(model, result: ProbeResult, folder: str | Path, *, layer_map: LayerMap | None = None,
                 image_size: int | None = None):
    """Write ``result`` (a linear probe) as a model folder that `from_pretrained` and `pipeline()` load.

    Pooled bottleneck: the backbone's own class with the folded probe written into its head (loads without
    hf_transfer). Earlier depth: an ``hf_transfer_probe`` model, the backbone cut after that depth, with its code
    beside the weights (``trust_remote_code=True``, or ``import hf_transfer``). ``model`` is left unchanged.
    Returns the exported model.
    """
    import copy

    from ..saving import save_model_folder

    adapter = adapter_for(model)
    weight, bias = (torch.from_numpy(a) for a in result.folded_head())
    layer_map = layer_map or adapter.layer_map()
    labels = model.config.id2label
    if weight.shape[0] != len(labels):
        raise TransferError(f"the probe has {weight.shape[0]} outputs but the model has {len(labels)} labels; "
                            "load the backbone with the dataset's labels")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if result.layer.is_pooled:
        exported = copy.deepcopy(model).to(memory_format=torch.contiguous_format).float()
        exported_adapter = adapter.bind_copy(exported)
        exported_adapter.write_linear_head(weight, bias)
        exported.config.hf_transfer_probe = {"probe": result.probe, "layer": "pooled", result.param_name: result.param_value}
        exported.eval()
        save_model_folder(exported, folder, image_size=image_size)
        if not (folder / "preprocessor_config.json").exists() and not exported_adapter.config_preprocessing():
            _write_processor(exported_adapter, folder, image_size)
        return exported

    import shutil

    from .. import modeling_probe

    depth = result.layer.depth
    pruned = _later_modules(layer_map, depth)  # never run: the forward stops at the probed depth
    config = modeling_probe.HFTransferProbeConfig(
        backbone_config=model.config.to_dict(),
        output_module=result.layer.module,
        depth=depth,
        depth_name=result.layer.name,
        pruned_modules=pruned,
        nhwc=adapter.nhwc_default,
        num_features=int(weight.shape[1]),
        num_logits=int(weight.shape[0]),
        probe=result.probe,
        # The model's code travels with it: loadable with trust_remote_code=True where hf_transfer is not installed.
        auto_map={"AutoConfig": "modeling_probe.HFTransferProbeConfig",
                  "AutoModelForImageClassification": "modeling_probe.HFTransferProbeForImageClassification"},
        # transformers reads a timm folder's preprocessing from config.json: keep it there, as TimmWrapper does.
        **adapter.config_preprocessing(),
        id2label={int(k): v for k, v in labels.items()},
        label2id={v: int(k) for k, v in labels.items()},
    )
    exported = modeling_probe.HFTransferProbeForImageClassification(config)
    kept = {k: v for k, v in model.state_dict().items() if not any(k.startswith(m + ".") for m in pruned)}
    exported.backbone.load_state_dict({k: v.contiguous() for k, v in kept.items()}, strict=True)
    with torch.no_grad():
        exported.classifier.weight.copy_(weight)
        exported.classifier.bias.copy_(bias)
    exported.eval()
    exported.save_pretrained(folder, safe_serialization=True)
    shutil.copyfile(modeling_probe.__file__, folder / "modeling_probe.py")
    _write_processor(adapter, folder, image_size)
    return exported


def _write_processor(adapter, folder: Path, image_size: int | None) -> None:
    """preprocessor_config.json, which AutoImageProcessor / pipeline() need to preprocess raw images."""
    import json

    carried = adapter.config_preprocessing()
    if carried:
        # A timm processor's save_pretrained is a no-op (timm keeps preprocessing in its config.json), but an
        # hf_transfer_probe config is ours: write the file that AutoImageProcessor looks for.
        (folder / "preprocessor_config.json").write_text(json.dumps(carried, indent=2, default=list) + "\n")
        return
    adapter.image_processor(image_size).save_pretrained(folder)


# ---------------------------------------------------------------------------------------------- LP-FT hand-off
def init_head_from_probe(model, probe_dir: str | Path):
    """Copy an exported pooled-depth linear probe's head into ``model`` (same backbone, freshly loaded): LP-FT.

    The whole head is copied (every classifier of twin heads, the norm before a linear), so the model starts with
    the probe's logits. Checks that the labels and the feature size match; the rest of ``model`` is untouched.
    Returns ``model``.
    """
    import json

    from safetensors.torch import load_file

    probe_dir = Path(probe_dir)
    config_file, weights_file = probe_dir / "config.json", probe_dir / "model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise TransferError(f"{str(probe_dir)!r} is not an exported probe (no config.json/model.safetensors); "
                            "pass the output folder of recipes/linear_probe.py")
    if json.loads(config_file.read_text()).get("model_type") == "hf_transfer_probe":
        depth = json.loads(config_file.read_text()).get("depth")
        raise TransferError(f"the probe in {str(probe_dir)!r} reads depth {depth}, not the pooled bottleneck; "
                            "LP-FT needs a probe exported with --layers pooled")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(probe_dir)  # label storage differs per model type (timm: label_names)
    probe_labels = {int(k): str(v) for k, v in config.id2label.items()}
    model_labels = {int(k): str(v) for k, v in model.config.id2label.items()}
    if probe_labels != model_labels:
        raise TransferError(f"the probe's labels ({', '.join(probe_labels.values())}) differ from the model's "
                            f"({', '.join(model_labels.values())}); load the model with the probe's dataset labels")
    head = adapter_for(model).head_state()
    state = load_file(str(weights_file))
    missing = [k for k in head if k not in state]
    if missing:
        raise TransferError(f"the probe in {str(probe_dir)!r} has no {missing[0]} weights: it was exported from a "
                            "different backbone; probe the same backbone you fine-tune")
    for key, tensor in head.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise TransferError(f"the probe's {key} is {tuple(state[key].shape)} but the model's is "
                                f"{tuple(tensor.shape)} (labels x feature size); probe the same backbone you fine-tune")
    with torch.no_grad():
        for key, tensor in head.items():
            tensor.copy_(state[key].to(tensor.dtype))
    return model
