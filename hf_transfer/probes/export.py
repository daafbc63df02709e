"""Export a probe as a model folder, and hand an exported probe's head to fine-tuning (LP-FT).

Linear probe of the pooled bottleneck: the backbone's own class, with the probe written into its head by the
backbone adapter (every classifier of twin heads, norms between the pooled feature and the linear made the
identity), so the model's logits are the probe's. Anything else (an earlier depth, a concatenation of depths, an
MLP head): an ``hf_transfer_probe`` model (`modeling_probe.py`, written beside the weights so the folder loads with
``trust_remote_code=True`` where hf_transfer is not installed). Every export is checked before it is written: on a
random input its logits must equal the in-memory probe's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..backbones import adapter_for
from ..errors import TransferError
from ..layers import LayerMap
from .search import ProbeResult


def _later_modules(layer_map: LayerMap, depth: int) -> list[str]:
    return [m for g in layer_map.groups if g.index > depth for m in g.module_names]


def _probe_outputs(result: ProbeResult) -> int:
    if result.mlp is not None:
        return int(result.mlp.module.fc2.out_features)
    if result.kernel is not None:
        return len(result.kernel.classes)
    return int(result.folded_head()[0].shape[0])


def _standardize_in_head_norms(adapter, result: ProbeResult) -> bool:
    """A head with a BatchNorm before each classifier (EfficientViT-MSRA, LeViT: ``head.bn -> head.linear``): put
    the probe's standardization into the norms and its unfolded coefficients into the linears. Features far from
    zero for their spread lose digits to cancellation in the folded ``x @ (coef / scale) + b'`` in float32 (0.3% of
    the logit scale, seen on efficientvit_m0); standardizing first is 4-7x closer (measured, mean/std 4e2-4e4; not
    exact: eval BatchNorm on CPU also fuses into ``x * a + b``). What still misses 1e-4 is written in float64 by
    the caller. False (nothing changed) when the head has no such norms."""
    head = set(adapter.head_params())
    linear = result.linear
    norms = [m for name, m in adapter.model.named_modules()
             if isinstance(m, torch.nn.BatchNorm1d) and f"{name}.weight" in head]
    linears = adapter.classifier_linears()
    if not norms or len(norms) != len(linears) or any(n.num_features != linear.mean.shape[0] for n in norms):
        return False
    # x - mean runs in float32, exactly (Sterbenz) when x is near mean; the mean's own rounding to float32 is a fixed
    # shift of every logit, taken back in the bias
    mean32 = linear.mean.astype(np.float32).astype(np.float64)
    coef, intercept = linear.coef, linear.intercept + linear.coef @ ((mean32 - linear.mean) / linear.scale)
    if coef.shape[0] == 1:  # binary: logits [0, d]
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    with torch.no_grad():
        for norm in norms:  # eval BatchNorm: (x - running_mean) / sqrt(running_var + eps) * weight + bias
            norm.running_mean.copy_(torch.from_numpy(linear.mean))
            norm.running_var.copy_(torch.from_numpy(linear.scale ** 2))
            norm.weight.copy_(torch.from_numpy(np.sqrt(linear.scale ** 2 + norm.eps) / linear.scale))
            norm.bias.zero_()
        for _, module in linears:
            module.weight.copy_(torch.from_numpy(coef))
            module.bias.copy_(torch.from_numpy(intercept))
    return True


def export_probe(model, result: ProbeResult, folder: str | Path, *, layer_map: LayerMap | None = None,
                 image_size: int | None = None, check_pixels: torch.Tensor | None = None):
    """Write ``result`` (a linear or MLP probe) as a model folder that `from_pretrained` and `pipeline()` load.

    Linear probe of the pooled bottleneck: the backbone's own class with the folded probe written into its head
    (loads without hf_transfer). Otherwise an ``hf_transfer_probe`` model with its code beside the weights
    (``trust_remote_code=True``, or ``import hf_transfer``): the backbone cut after the deepest depth it reads, or
    whole with identity classifiers when it reads the pooled bottleneck; the parts pooled and concatenated; the
    folded linear head, the MLP or the kernel head. ``model`` is left unchanged. Returns the exported model.

    Before anything is written, the export's logits must equal the in-memory probe's decision values to 1e-4 of
    their scale on ``check_pixels`` (held-out images; a random batch without them). A pooled linear probe that the
    backbone's float32 head cannot reproduce that closely goes to the ``hf_transfer_probe`` form (float64 head).
    A kernel head over `MAX_HEAD_BYTES` is refused with its size.
    """
    import copy

    from ..saving import save_model_folder

    problem = result.export_problem()
    if problem:
        raise TransferError(f"{problem}; nothing was written. Export another probe (--export logreg or mlp), or "
                            "probe fewer images or a narrower layer")
    adapter = adapter_for(model)
    layer_map = layer_map or adapter.layer_map()
    labels = model.config.id2label
    outputs = _probe_outputs(result)
    if outputs != len(labels):
        raise TransferError(f"the probe has {outputs} outputs but the model has {len(labels)} labels; "
                            "load the backbone with the dataset's labels")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = int(image_size or adapter.data_config()["input_size"][-1])
    pixels = check_pixels if check_pixels is not None else torch.randn(
        2, 3, size, size, generator=torch.Generator().manual_seed(0))
    if result.layer.is_pooled and result.linear is not None:
        weight, bias = (torch.from_numpy(a) for a in result.folded_head())
        exported = copy.deepcopy(model).to(memory_format=torch.contiguous_format).float()
        exported_adapter = adapter.bind_copy(exported)
        exported_adapter.write_linear_head(weight, bias)
        _standardize_in_head_norms(exported_adapter, result)
        exported.config.hf_transfer_probe = {"probe": result.probe, "layer": "pooled", result.param_name: result.param_value}
        exported.eval()
        if _logit_error(model, exported, result, layer_map, pixels) <= LOGIT_TOLERANCE:
            save_model_folder(exported, folder, image_size=image_size)
            if not (folder / "preprocessor_config.json").exists() and not exported_adapter.config_preprocessing():
                _write_processor(exported_adapter, folder, image_size)
            return exported
        # float32 rounding in the backbone's own head: the float64 hf_transfer_probe form below

    exported = _probe_model(model, adapter, result, layer_map)
    _check_logits(model, exported, result, layer_map, pixels)
    import shutil

    from .. import modeling_probe

    exported.save_pretrained(folder, safe_serialization=True)
    shutil.copyfile(modeling_probe.__file__, folder / "modeling_probe.py")
    _write_processor(adapter, folder, image_size)
    return exported


def _probe_model(model, adapter, result: ProbeResult, layer_map: LayerMap):
    """The ``hf_transfer_probe`` model of ``result``: backbone weights, parts, head."""
    import copy

    from .. import modeling_probe

    parts = result.layer.singles
    depths = [p.depth for p in parts if not p.is_pooled]
    source, identity, pruned = model, [], []
    if any(p.is_pooled for p in parts):
        # The whole backbone runs; its classifier linears become the identity and the norms between the pooled
        # feature and them are made the identity by the adapter (as for a pooled export): its logits are the pooled
        # feature. A head the adapter cannot neutralize is refused here, in one line.
        source = copy.deepcopy(model).to(memory_format=torch.contiguous_format).float()
        source_adapter = adapter.bind_copy(source)
        linears = source_adapter.classifier_linears()
        source_adapter.write_linear_head(torch.zeros(linears[0][1].out_features, linears[0][1].in_features),
                                         torch.zeros(linears[0][1].out_features))
        identity = [name for name, _ in linears]
    else:
        pruned = _later_modules(layer_map, max(depths))  # never run: the forward stops at the deepest part
    if result.mlp is not None:
        num_features, head = result.mlp.module.fc1.in_features, {"head": "mlp", "hidden_size": result.mlp.hidden_size,
                                                                  "activation": result.mlp.activation}
    elif result.kernel is not None:
        kernel = result.kernel.module
        num_features, head = kernel.support.shape[1], {"head": result.probe, "num_support": len(kernel.support),
                                                       "num_classes": kernel.num_classes, "neighbours": kernel.neighbours}
    else:
        weight, bias = (torch.from_numpy(a) for a in result.folded_head())
        num_features, head = int(weight.shape[1]), {"head": "linear"}
    deepest = max((p for p in parts if not p.is_pooled), key=lambda p: p.depth, default=None)
    labels = model.config.id2label
    config = modeling_probe.HFTransferProbeConfig(
        backbone_config=model.config.to_dict(),
        output_module=deepest.module if deepest else None,
        depth=deepest.depth if deepest else None,
        depth_name=result.layer.name,
        pruned_modules=pruned,
        nhwc=adapter.nhwc_default,
        num_features=int(num_features),
        num_logits=len(labels),
        probe=result.probe,
        parts=[{"module": p.module, "depth": p.depth, "pooling": "model" if p.is_pooled else p.pooling} for p in parts],
        identity_modules=identity,
        layers=result.layer.spec,
        **head,
        # The model's code travels with it: loadable with trust_remote_code=True where hf_transfer is not installed.
        auto_map={"AutoConfig": "modeling_probe.HFTransferProbeConfig",
                  "AutoModelForImageClassification": "modeling_probe.HFTransferProbeForImageClassification"},
        # transformers reads a timm folder's preprocessing from config.json: keep it there, as TimmWrapper does.
        **adapter.config_preprocessing(),
        id2label={int(k): v for k, v in labels.items()},
        label2id={v: int(k) for k, v in labels.items()},
    )
    exported = modeling_probe.HFTransferProbeForImageClassification(config)
    dropped = tuple(m + "." for m in pruned + identity)
    kept = {k: v for k, v in source.state_dict().items() if not k.startswith(dropped)}
    exported.backbone.load_state_dict({k: v.contiguous() for k, v in kept.items()}, strict=True)
    with torch.no_grad():
        if result.mlp is not None:
            exported.classifier.load_state_dict(result.mlp.module.state_dict())
        elif result.kernel is not None:
            exported.classifier.load_state_dict(result.kernel.module.state_dict())
        else:
            exported.classifier.weight.copy_(weight)
            exported.classifier.bias.copy_(bias)
    return exported.eval()


LOGIT_TOLERANCE = 1e-4  # of the logits' scale (their largest magnitude, at least 1)


def _check_logits(model, exported, result: ProbeResult, layer_map: LayerMap, pixels: torch.Tensor) -> None:
    """Refuse an export whose logits differ from the in-memory probe's (never a silently wrong model: a backbone
    whose head or layout the export misreads is caught here, before anything is written)."""
    error = _logit_error(model, exported, result, layer_map, pixels)
    if not error <= LOGIT_TOLERANCE:
        raise TransferError(f"the exported {result.probe} probe on {result.layer.name} does not reproduce the probe "
                            f"(logits differ by {error:.2g} of their scale on the check images); nothing was written. "
                            "Export a probe of another layer, or report this backbone")


def _logit_error(model, exported, result: ProbeResult, layer_map: LayerMap, pixels: torch.Tensor) -> float:
    """The largest difference between the export's logits and the probe's decision values on ``pixels``, relative
    to their scale (nan when not finite)."""
    from ..features import FeatureExtractor

    def on_device_of(module):
        return pixels.to(next(module.parameters()).device)

    was_training = model.training
    try:
        features = FeatureExtractor(model.eval(), [result.layer], layer_map)(on_device_of(model))[result.layer.key].cpu()
    finally:
        model.train(was_training)
    expected = np.asarray(result.decision_function(features.numpy() if result.mlp is not None else features.double().numpy()))
    if expected.ndim == 1:  # a binary linear probe: logits [0, d]
        expected = np.stack([np.zeros_like(expected), expected], 1)
    with torch.inference_mode():
        logits = exported(pixel_values=on_device_of(exported)).logits.double().cpu().numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    error = float(np.abs(logits - expected).max()) / scale
    return error if np.isfinite(error) else float("nan")


def export_processor(adapter, image_size: int | None):
    """The image processor an exported folder carries, as pipeline() will load it: the processor type and settings
    the adapter keeps in config.json (timm families), else the processor file it saves."""
    carried = dict(adapter.config_preprocessing())
    if carried:
        from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

        processor_class = get_image_processor_class_from_name(carried.pop("image_processor_type"))
        return processor_class.from_dict(carried)
    return adapter.image_processor(image_size)


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
                            "pass the output folder of hf-transfer probe")
    probe_config = json.loads(config_file.read_text())
    if probe_config.get("model_type") == "hf_transfer_probe":
        what = (f"an {probe_config.get('head', 'linear')} probe of "
                f"{probe_config.get('depth_name') or 'depth ' + str(probe_config.get('depth'))}")
        raise TransferError(f"the probe in {str(probe_dir)!r} is {what}, not a linear probe of the pooled bottleneck; "
                            "LP-FT needs a probe exported with --layers pooled and a linear --probe")
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
