"""The strategy advisor: measure (data, backbone), decide the transfer scenario, write a plan a recipe runs.

* `measure`: size and balance; similarity per depth (probe curve, LogME, BatchNorm shift); cost per image;
* `logme`: LogME (You et al., ICML 2021) in numpy;
* `rules`: the decision rules and their thresholds, in one place;
* `rank`: candidate backbones ranked before anything is fine-tuned;
* `recipe`, `report`, `advice`: the plan as YAML for recipes/finetune.py or recipes/linear_probe.py, the markdown
  report and the per-depth plot.

The job that loads data and backbones and calls these is `hf_transfer.jobs.advise` (recipes/advise.py,
`hf-transfer advise`, and `recipes/finetune.py --strategy auto`).
"""

from .advice import ADVICE_FILES, Advice, build_advice
from .logme import logme
from .measure import BackboneMeasurement, CostStats, DepthMeasure, SimilarityStats, SizeStats, batchnorm_shift, gaussian_kl
from .rank import rank_backbones, ranking_table
from .recipe import plan_config, write_plan_yaml
from .rules import SCENARIOS, Decision, Thresholds, decide

__all__ = [
    "ADVICE_FILES",
    "SCENARIOS",
    "Advice",
    "BackboneMeasurement",
    "CostStats",
    "Decision",
    "DepthMeasure",
    "SimilarityStats",
    "SizeStats",
    "Thresholds",
    "batchnorm_shift",
    "build_advice",
    "decide",
    "gaussian_kl",
    "logme",
    "plan_config",
    "rank_backbones",
    "ranking_table",
    "write_plan_yaml",
]
