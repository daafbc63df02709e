"""--strategy partial: the --freeze rule's layers stay frozen for the whole run, the rest trains."""

from ..errors import TransferError
from .base import Strategy, register


@register
class Partial(Strategy):
    name = "partial"
    summary = "the --freeze rule's depth groups stay frozen, the rest trains"
    freezes_body = True
    decision_flags = ("freeze",)

    def validate(self, config) -> None:
        if config.freeze in ("none", "", None):
            raise TransferError("--strategy partial needs a --freeze rule; pass e.g. --freeze fraction:0.5")
        super().validate(config)
