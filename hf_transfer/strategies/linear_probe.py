"""--strategy linear_probe: the body stays frozen; only the head (and any --reinit module) trains."""

from .base import ParamRoles, Strategy, register


@register
class LinearProbe(Strategy):
    name = "linear_probe"
    summary = "the head alone trains; the pretrained body is frozen"
    trains_pretrained_layers = False
    freezes_body = True
    allows_gradual_unfreeze = False

    def param_roles(self, config, names, layer_map, frozen, new) -> ParamRoles:
        body = set(layer_map.param_names([g.index for g in layer_map.body]))
        return super().param_roles(config, names, layer_map, frozen | body, new)
