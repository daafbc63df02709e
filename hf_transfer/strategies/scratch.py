"""--strategy scratch: random initial weights; every parameter is new and trains at the head's rate."""

from .base import ParamRoles, Strategy, register


@register
class Scratch(Strategy):
    name = "scratch"
    summary = "random initial weights: every layer trains at the head's rate"
    trains_pretrained_layers = False
    loads_pretrained = False

    def param_roles(self, config, names, layer_map, frozen, new) -> ParamRoles:
        return super().param_roles(config, names, layer_map, frozen, set(names))  # nothing is pretrained
