"""--strategy lp_ft: the head trains alone for --lp_epochs (or starts from a probe's head), then every layer."""

from ..errors import TransferError
from .base import Strategy, register


@register
class LinearProbeThenFineTune(Strategy):
    name = "lp_ft"
    summary = "the head trains alone for --lp_epochs, then every layer (Kumar et al., 2022)"
    head_only_phase = True
    allows_gradual_unfreeze = False
    decision_flags = ("lp_epochs",)

    def validate(self, config) -> None:
        if config.lp_epochs < 1 and not config.head_init_from:
            raise TransferError("--strategy lp_ft needs --lp_epochs N (N >= 1 head-only epochs) or a probe's head "
                                "(--head_init_from DIR, from recipes/linear_probe.py)")
        super().validate(config)
