"""The Hub side of an output folder, one module per job:

* `run_files`: the files HF example scripts leave beside a model (split results, trainer state, training
  arguments as JSON) and the card's two figures;
* `folder`: reading a finished folder or checkpoint back (`FolderRecord`, its `RunRecord`);
* `card`: ``README.md`` with Hub metadata and a human part, from the folder's own files;
* `push`: the checks before an upload, the upload (``HfApi``), and ``--push_to_hub`` at the end of a run.

Everything the old ``hub.py`` exported is importable from ``hf_transfer.hub``.
"""

from ..saving import WEIGHT_FILES
from .card import CARD_FILE, PROBE_PLOT_FILE, PROBE_SCORES, PROBE_TABLE_FILE, card_metadata, write_model_card
from .folder import PLAN_FILE, STATE_FILE, FolderRecord, is_checkpoint, label_names
from .push import (UPLOAD_IGNORE, PushResult, check_folder, check_reload, describe_files, files_to_upload,
                   hub_unreachable_reason, push_after_training, push_folder, take_push_request, upload_ignore_patterns)
from .run_files import (CONFUSION_FILE, CURVES_FILE, SPLITS, TRAINING_ARGS_FILE, confusion_matrix, plot_confusion_matrix,
                        plot_training_curves, run_summary, save_run_files, split_metrics, write_training_args)

__all__ = [
    "CARD_FILE", "CONFUSION_FILE", "CURVES_FILE", "PLAN_FILE", "PROBE_PLOT_FILE", "PROBE_SCORES", "PROBE_TABLE_FILE",
    "SPLITS", "STATE_FILE", "TRAINING_ARGS_FILE", "UPLOAD_IGNORE", "WEIGHT_FILES", "FolderRecord", "PushResult",
    "card_metadata", "check_folder", "check_reload", "confusion_matrix", "describe_files", "files_to_upload",
    "hub_unreachable_reason", "is_checkpoint", "label_names", "plot_confusion_matrix", "plot_training_curves",
    "push_after_training", "push_folder", "run_summary", "save_run_files", "split_metrics", "take_push_request",
    "upload_ignore_patterns", "write_model_card", "write_training_args",
]
