"""--strategy auto: the advisor (jobs/advise.py) measures the data and the backbone and picks one of the others.

It never builds a plan itself: the job replaces it with the advisor's choice before anything is validated.
"""

from .base import Strategy, register


@register
class Auto(Strategy):
    name = "auto"
    summary = "the advisor measures the data and the backbone and picks one of the others"
    builds_plan = False
