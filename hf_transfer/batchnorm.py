"""The plan's BatchNorm policy while the model trains: chosen BatchNorm modules stay in eval mode.

Trainer calls ``model.train()`` every step, which would put frozen BatchNorm layers back to updating their running
statistics; a forward pre-hook on the model root sets them to eval() again before each forward.
"""

from __future__ import annotations

import torch


class BatchNormPolicy:
    """Keeps chosen BatchNorm modules in eval mode while the model trains (a pre-hook on the model root)."""

    def __init__(self, model: torch.nn.Module):
        self.modules: list[torch.nn.Module] = []
        self.handle = model.register_forward_pre_hook(self._hook)

    def set(self, modules: list[torch.nn.Module]) -> None:
        self.modules = list(modules)

    def _hook(self, model, args):
        if model.training:
            for module in self.modules:
                module.eval()

    def remove(self) -> None:
        self.handle.remove()
