"""--strategy full: every layer trains from the first step; the pretrained body at x backbone_lr_multiplier."""

from .base import Strategy, get_strategy, register


@register
class Full(Strategy):
    name = "full"
    summary = "every layer trains; the pretrained body at --backbone_lr_multiplier times the head's rate"

    def with_random_weights(self) -> Strategy:
        return get_strategy("scratch")  # random weights: nothing is pretrained, so no backbone lr multiplier
