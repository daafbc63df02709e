"""Loading a checkpoint's weights back into the model being trained, under the names the model has in memory.

transformers 5 renames parameters on load (ViT's ``encoder.layer.N.attention.attention.query`` on disk is
``layers.N.attention.q_proj`` in memory) and `save_pretrained` writes the disk names back. Trainer's resume loads a
checkpoint with a plain ``load_state_dict(strict=False)``: with renamed models it keeps the fresh weights of 48 of 56
tensors and only warns. Here the checkpoint goes through transformers' own conversion (``from_pretrained``), and a
checkpoint that would still leave a missing or unexpected tensor is refused in one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import TransferError
from .adapter import name_some

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


def checkpoint_keys(folder: str | os.PathLike) -> set[str] | None:
    """Tensor names in a checkpoint's safetensors file(s); None when it has none (peft adapters, .bin, FSDP)."""
    folder = Path(folder)
    if (folder / SAFE_INDEX).is_file():
        return set(json.loads((folder / SAFE_INDEX).read_text())["weight_map"])
    if (folder / SAFE_WEIGHTS).is_file():
        from safetensors import safe_open

        with safe_open(str(folder / SAFE_WEIGHTS), framework="pt") as handle:
            return set(handle.keys())
    return None


def load_checkpoint_weights(model: torch.nn.Module, folder: str | os.PathLike) -> bool:
    """Load ``folder``'s weights into ``model`` in place, every tensor, under the model's own names.

    Returns False when this is not a plain transformers safetensors checkpoint (a peft wrapper, a sharded engine's
    files, a ``.bin``): the caller then uses Trainer's own loading. Raises `TransferError` when the checkpoint leaves
    any of the model's tensors missing or holds tensors the model does not have.
    """
    from transformers import PreTrainedModel

    keys = checkpoint_keys(folder)
    if keys is None or not isinstance(model, PreTrainedModel):
        return False
    expected = model.state_dict()
    if keys == set(expected):
        from safetensors.torch import load_file

        state = {}
        for file in sorted(Path(folder).glob("model*.safetensors")):
            state.update(load_file(file, device="cpu"))
        problems = _mismatches(expected, state)
    else:
        # The names differ (transformers renames on load): let transformers convert them, as from_pretrained does.
        loaded, info = type(model).from_pretrained(folder, config=model.config, output_loading_info=True)
        state = loaded.state_dict()
        problems = _mismatches(expected, state)
        problems["unexpected"] += list(info.get("unexpected_keys") or [])
        problems["missing"] += [k for k in info.get("missing_keys") or [] if k not in problems["missing"]]
        problems["mismatched"] += [str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or []]
    if any(problems.values()):
        what = "; ".join(f"{kind} {len(names)} ({name_some(sorted(names))})" for kind, names in problems.items() if names)
        raise TransferError(f"cannot resume from {str(folder)!r}: its weights do not fit {type(model).__name__} ({what}); "
                            "resume with the model and flags that wrote the checkpoint, or start a new --output_dir")
    with torch.no_grad():
        for name, tensor in expected.items():
            tensor.copy_(state[name])
    return True


def _mismatches(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    return {
        "missing": [k for k in expected if k not in state],
        "unexpected": [k for k in state if k not in expected],
        "mismatched": [k for k in expected if k in state and state[k].shape != expected[k].shape],
    }
