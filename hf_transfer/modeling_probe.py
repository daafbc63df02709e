"""An exported probe as a `transformers` model: ``model_type = "hf_transfer_probe"``.

Features: one depth group's output pooled globally (mean over H×W or over tokens; ``avgmax``: mean and max side by
side), or several of them and the pooled bottleneck concatenated (``parts``). A depth-only probe keeps the backbone
up to its deepest part (later groups are dropped from the weights and never run: the forward stops at the last
hooked output). A probe that reads the pooled bottleneck keeps the whole backbone with its classifier linears
replaced by the identity (``identity_modules``) and the norms between the pooled feature and them made the identity
at export, so the backbone's logits *are* its pooled feature.

Head: a linear layer with the standardization folded in, kept in float64 so that the logits reproduce
scikit-learn's ``decision_function`` to ~1e-6; `ProbeMLP` (standardization, one hidden layer), the very module
the MLP probe was trained as; or `KernelProbe` (an RBF-SVM's support vectors, dual coefficients, intercept and
gamma, or k-NN's training rows and labels, with the standardization), in float64.

This file imports nothing from hf_transfer: an export copies it next to the weights and names it in the config's
``auto_map``, so the folder loads with ``trust_remote_code=True`` where hf_transfer is not installed. With
hf_transfer imported, `register()` makes the Auto classes know the type without remote code. Linear probes on the
pooled bottleneck alone are exported as the ordinary backbone class instead and need neither.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

PROBE_MODEL_TYPE = "hf_transfer_probe"


class HFTransferProbeConfig(PretrainedConfig):
    """Backbone config + which outputs to read and how to pool them, and the head.

    ``parts``: ``[{"module": name or None (the pooled bottleneck), "depth": int or None, "pooling": "avg"|"avgmax"}]``,
    concatenated in this order. Folders exported before concatenations existed name one ``output_module``.
    """

    model_type = PROBE_MODEL_TYPE

    def __init__(
        self,
        backbone_config: dict | PretrainedConfig | None = None,
        output_module: str | None = None,
        depth: int | None = None,
        depth_name: str | None = None,
        pruned_modules: list[str] | None = None,
        nhwc: bool = False,
        num_features: int = 1,
        num_logits: int = 2,
        probe: str | None = None,
        parts: list[dict] | None = None,
        identity_modules: list[str] | None = None,
        head: str = "linear",
        hidden_size: int | None = None,
        activation: str = "gelu",
        num_support: int | None = None,
        num_classes: int | None = None,
        neighbours: int | None = None,
        **kwargs,
    ):
        if isinstance(backbone_config, dict):
            from transformers import CONFIG_MAPPING

            backbone_config = CONFIG_MAPPING[backbone_config["model_type"]].from_dict(backbone_config)
        self.backbone_config = backbone_config
        self.output_module = output_module
        self.depth = depth
        self.depth_name = depth_name
        self.pruned_modules = list(pruned_modules or [])
        self.nhwc = nhwc
        self.num_features = num_features
        self.num_logits = num_logits
        self.probe = probe
        if parts is None and output_module is not None:
            parts = [{"module": output_module, "depth": depth, "pooling": "avg"}]
        self.parts = [dict(part) for part in (parts or [])]
        self.identity_modules = list(identity_modules or [])
        self.head = head
        self.hidden_size = hidden_size
        self.activation = activation
        self.num_support = num_support  # kernel heads: support rows, classes, k of k-NN
        self.num_classes = num_classes
        self.neighbours = neighbours
        super().__init__(**kwargs)

    def to_dict(self):
        output = super().to_dict()
        if isinstance(self.backbone_config, PretrainedConfig):
            output["backbone_config"] = self.backbone_config.to_dict()
        return output


def module_is_nhwc(module: torch.nn.Module, default: bool = False) -> bool:
    """Whether a module's 4-D output is (N, H, W, C): timm modules say so in ``output_fmt`` (e.g. ViT patch_embed)."""
    fmt = getattr(module, "output_fmt", None)
    if fmt is None:
        return default
    return str(getattr(fmt, "value", fmt)).upper().endswith("NHWC")


def first_tensor(output) -> torch.Tensor:
    """A module's output -> its first tensor, depth first: a transformers ModelOutput, a tuple, or nested tuples
    (PvtV2's encoder layer returns ``((hidden_states,), height, width)``)."""
    while not isinstance(output, torch.Tensor):
        if hasattr(output, "to_tuple"):  # a transformers ModelOutput
            output = output.to_tuple()
        if not isinstance(output, (tuple, list)) or not output:
            raise ValueError(f"cannot read features from a layer output of type {type(output).__name__}; choose "
                             "another depth with --layers")
        output = output[0]
    return output


def global_pool(output, nhwc: bool = False, pooling: str = "avg") -> torch.Tensor:
    """A depth group's output -> (N, C): mean over H×W (CNN maps) or over tokens (N, L, C); ``avgmax``: (N, 2C),
    the mean and the max side by side (a 2-D output is one position: its mean and max are itself)."""
    output = first_tensor(output)
    if pooling not in ("avg", "avgmax"):
        raise ValueError(f"unknown pooling {pooling!r}; use avg or avgmax")
    if output.ndim == 4:
        dims = (1, 2) if nhwc else (2, 3)
    elif output.ndim == 3:
        dims = (1,)
    elif output.ndim == 2:
        return output if pooling == "avg" else torch.cat([output, output], dim=1)
    else:
        raise ValueError(f"cannot pool a layer output of shape {tuple(output.shape)}; choose another depth with --layers")
    mean = output.mean(dim=dims)
    return mean if pooling == "avg" else torch.cat([mean, output.amax(dim=dims)], dim=1)


ACTIVATIONS = {"gelu": torch.nn.GELU, "relu": torch.nn.ReLU}


class ProbeMLP(torch.nn.Module):
    """Standardize, one hidden layer, logits: ``fc2(drop(act(fc1((x - mean) / scale))))`` in float32.

    The MLP probe trains as this module and exports as it (dropout is the identity in eval mode).
    """

    def __init__(self, num_features: int, hidden_size: int, num_logits: int, activation: str = "gelu",
                 dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("scale", torch.ones(num_features))
        self.fc1 = torch.nn.Linear(num_features, hidden_size)
        self.act = ACTIVATIONS[activation]()
        self.drop = torch.nn.Dropout(dropout)
        self.fc2 = torch.nn.Linear(hidden_size, num_logits)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1((features - self.mean) / self.scale))))


class KernelProbe(torch.nn.Module):
    """A kernel probe on standardized features, in float64: an RBF-SVM's decision function, or k-NN's vote shares.

    ``rbf_svm``: ``d = exp(-gamma |z - sv|^2) @ coef + intercept`` with ``z = (x - mean) / scale``, one column per
    class pair (i, j), i < j (scikit-learn's one-vs-one). Binary: logits ``[0, d]``. More classes: scikit-learn's
    ``decision_function_shape="ovr"`` transform, votes plus confidences squashed into (-1/3, 1/3), so the argmax is
    the class with most pairwise wins, ties broken by confidence (``SVC(break_ties=True).predict``).
    ``knn``: the share of each class among the ``k`` nearest support rows (``predict_proba``): logits in [0, 1].
    These are decision values, not calibrated probabilities: softmax over them (what pipeline() shows) ranks the
    classes as the probe does but its scores are not the chance of being right.
    """

    def __init__(self, kind: str, num_features: int, num_support: int, num_columns: int, num_classes: int,
                 neighbours: int = 1):
        super().__init__()
        if kind not in ("rbf_svm", "knn"):
            raise ValueError(f"unknown kernel probe {kind!r} (this modeling_probe.py knows rbf_svm and knn)")
        self.kind, self.num_classes, self.neighbours = kind, num_classes, neighbours
        double = torch.float64
        self.register_buffer("mean", torch.zeros(num_features, dtype=double))
        self.register_buffer("scale", torch.ones(num_features, dtype=double))
        self.register_buffer("support", torch.zeros(num_support, num_features, dtype=double))
        # rbf_svm: (support, pairs) dual coefficients; knn: (support, classes) one-hot labels
        self.register_buffer("coef", torch.zeros(num_support, num_columns, dtype=double))
        self.register_buffer("intercept", torch.zeros(num_columns, dtype=double))
        self.register_buffer("gamma", torch.ones((), dtype=double))
        pairs = [(i, j) for i in range(num_classes) for j in range(i + 1, num_classes)]
        first, second = torch.zeros(len(pairs), num_classes, dtype=double), torch.zeros(len(pairs), num_classes, dtype=double)
        for column, (i, j) in enumerate(pairs):
            first[column, i], second[column, j] = 1.0, 1.0
        # saved with the weights: transformers builds the model on the meta device and fills buffers from the file
        self.register_buffer("pair_first", first)
        self.register_buffer("pair_second", second)

    def squared_distances(self, features: torch.Tensor) -> torch.Tensor:
        z = (features.to(torch.float64) - self.mean) / self.scale
        # as libsvm computes it: |z|^2 + |sv|^2 - 2 z.sv, in float64
        return (z.pow(2).sum(1, keepdim=True) + self.support.pow(2).sum(1) - 2 * z @ self.support.T).clamp_min(0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        distances = self.squared_distances(features)
        if self.kind == "knn":
            nearest = distances.topk(self.neighbours, dim=1, largest=False).indices
            return self.coef[nearest].mean(1)
        decision = torch.exp(-self.gamma * distances) @ self.coef + self.intercept
        if self.num_classes == 2:
            return torch.cat([torch.zeros_like(decision), decision], dim=1)
        votes = (decision >= 0).to(decision.dtype) @ self.pair_first + (decision < 0).to(decision.dtype) @ self.pair_second
        confidence = decision @ (self.pair_first - self.pair_second)
        return votes + confidence / (3 * (confidence.abs() + 1))


class _Pruned(torch.nn.Module):
    """Stands in for a module after the probed depth: it has no weights and must never run."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("this part of the backbone was removed when the probe was exported")


class _StopForward(Exception):
    pass


def _replace_module(root: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    parent._modules[child] = new


class HFTransferProbeForImageClassification(PreTrainedModel):
    """Backbone (cut after the deepest part, or with identity classifiers) -> pooled parts side by side -> head."""

    config_class = HFTransferProbeConfig
    base_model_prefix = "probe"
    main_input_name = "pixel_values"
    _no_split_modules = []

    def __init__(self, config: HFTransferProbeConfig):
        super().__init__(config)
        self.backbone = AutoModelForImageClassification.from_config(config.backbone_config)
        for name in config.pruned_modules:
            _replace_module(self.backbone, name, _Pruned())
        for name in config.identity_modules:
            _replace_module(self.backbone, name, torch.nn.Identity())
        if config.head == "mlp":
            self.classifier = ProbeMLP(config.num_features, config.hidden_size, config.num_logits, config.activation)
        elif config.head == "linear":
            self.classifier = torch.nn.Linear(config.num_features, config.num_logits, dtype=torch.float64)
        elif config.head in ("rbf_svm", "knn"):
            classes = config.num_classes or config.num_logits
            columns = classes if config.head == "knn" else max(1, classes * (classes - 1) // 2)
            self.classifier = KernelProbe(config.head, config.num_features, config.num_support, columns, classes,
                                          config.neighbours or 1)
        else:
            raise ValueError(f"unknown probe head {config.head!r} (this modeling_probe.py knows linear, mlp, rbf_svm "
                             "and knn)")
        self.post_init()

    def _init_weights(self, module):
        if module is getattr(self, "classifier", None) and isinstance(module, torch.nn.Linear):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)

    def pooled_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The parts' features side by side, (N, num_features), as the probe was fitted on them."""
        parts = self.config.parts
        captured: dict[int, torch.Tensor] = {}
        depth_parts = [i for i, part in enumerate(parts) if part.get("module")]
        wants_pooled = len(depth_parts) < len(parts)
        handles = []
        for module_name in dict.fromkeys(parts[i]["module"] for i in depth_parts):
            readers = [i for i in depth_parts if parts[i]["module"] == module_name]

            def hook(module, args, output, readers=readers):
                nhwc = module_is_nhwc(module, self.config.nhwc)
                for i in readers:
                    captured[i] = global_pool(output, nhwc, parts[i].get("pooling", "avg"))
                if not wants_pooled and len(captured) == len(depth_parts):
                    raise _StopForward  # everything is read: later layers never run

            handles.append(self.backbone.get_submodule(module_name).register_forward_hook(hook))
        try:
            output = self.backbone(pixel_values=pixel_values)
            if wants_pooled:  # the classifiers are the identity: the logits are the pooled feature
                pooled = (output.logits if hasattr(output, "logits") else output[0]).flatten(1)
                captured.update({i: pooled for i, part in enumerate(parts) if not part.get("module")})
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return torch.cat([captured[i].float() for i in range(len(parts))], dim=1)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs):
        features = self.pooled_features(pixel_values)
        head_dtype = next(iter(self.classifier.state_dict().values())).dtype  # float64 for linear and kernel heads
        logits = self.classifier(features.to(head_dtype))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        if return_dict is False:
            return (loss, logits) if loss is not None else (logits,)
        return ImageClassifierOutput(loss=loss, logits=logits)


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModelForImageClassification`` / pipeline() know ``hf_transfer_probe``."""
    try:
        AutoConfig.register(PROBE_MODEL_TYPE, HFTransferProbeConfig)
        AutoModelForImageClassification.register(HFTransferProbeConfig, HFTransferProbeForImageClassification)
    except ValueError:  # already registered (module re-imported)
        pass
