"""`--streaming` (hf_transfer/streaming.py): a parquet dataset read as an `IterableDataset`, offline.

The dataset has one class per row, so a batch's labels say which rows it holds: every process must train on its
own rows (none twice across processes), never on a held-out validation row, and the flags that need the
dataset's length must be refused in one line before anything loads.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS, SHARDS = 48, 4


def _write_parquet(folder: Path, rows: int = ROWS, shards: int = SHARDS, split: str = "train") -> Path:
    import datasets
    from PIL import Image

    # noise, not flat colours: a resize of a flat image is the same under every kernel, and the parity test below
    # must see the streamed path's resampling
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)) for i in range(rows)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{i:02d}" for i in range(rows)])})
    table = datasets.Dataset.from_dict({"image": images, "label": list(range(rows))}, features=features)
    folder.mkdir(parents=True, exist_ok=True)
    per = rows // shards
    for s in range(shards):
        table.select(range(s * per, (s + 1) * per)).to_parquet(str(folder / f"{split}-{s:05d}-of-{shards:05d}.parquet"))
    return folder


@pytest.fixture(autouse=True)
def no_shutdown_sleep(monkeypatch):
    """datasets sleeps 5 s at the end of every exhausted parquet stream (letting pyarrow's threads close): these
    tests read small streams to the end many times."""
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    return _write_parquet(tmp_path_factory.mktemp("stream") / "data")


def _load(folder, **flags):
    from hf_transfer.arguments import DataArguments

    return DataArguments(dataset_name=str(folder), streaming=True, **flags).load(0, allow_streaming=True)


def _labels(stream) -> list[int]:
    return [row["label"] for row in stream]


def test_streamed_training_rows_exclude_validation_on_one_and_two_shards_of_the_stream(parquet_dir):
    data = _load(parquet_dir, max_eval_samples=6)
    validation = set(data.splits["validation"]["label"])
    assert validation == set(range(6))  # the stream's first rows
    assert data.labels == [f"c{i:02d}" for i in range(ROWS)]
    train = data.splits["train"]
    assert sorted(_labels(train)) == list(range(6, ROWS))  # all the rest, each once
    # as accelerate splits it for 2 processes (by shards): disjoint, together the rest, no validation row
    # (`skip(6)` instead of the filter fails here: each shard skips 3 of its own rows)
    shares = [_labels(train.shard(num_shards=2, index=i)) for i in range(2)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(6, ROWS))
    # shuffled with a buffer (not the file order), the same order on every read of the same epoch
    order = _labels(train)
    assert order != sorted(order) and order == _labels(train)
    assert data.check is not None and data.check.images == {"train": ROWS - 6, "validation": 6} and not data.check.bad


def test_a_validation_split_is_used_as_given(tmp_path):
    folder = _write_parquet(tmp_path / "data", rows=8, shards=1)
    _write_parquet(folder, rows=8, shards=1, split="validation")
    data = _load(folder, max_eval_samples=3)
    assert data.splits["validation"]["label"] == [0, 1, 2]
    assert sorted(_labels(data.splits["train"])) == list(range(8))


def test_a_bad_image_in_the_checked_head_of_the_stream_is_an_error(tmp_path):
    import datasets

    from hf_transfer.errors import TransferError

    folder = tmp_path / "data"
    folder.mkdir()
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=["a", "b"])})
    cells = [{"bytes": b"not an image", "path": "broken.png"}, {"bytes": b"", "path": "empty.png"}]
    datasets.Dataset.from_dict({"image": cells, "label": [0, 1]}, features=features).to_parquet(str(folder / "train.parquet"))
    with pytest.raises(TransferError, match="unreadable|not an image|zero bytes"):
        _load(folder, max_eval_samples=1)


@pytest.mark.parametrize("flags, message", [
    ([], "--streaming reads a dataset of unknown length: give the run's length with --max_steps N"),
    (["--max_steps", "2", "--max_train_samples", "10"], "--max_train_samples needs the whole dataset"),
    (["--max_steps", "2", "--strategy", "auto"], "--strategy auto needs the whole dataset"),
    (["--max_steps", "2", "--strategy", "lp_ft", "--lp_epochs", "1"], "an epoch-based schedule"),
    (["--max_steps", "2", "--gradual_unfreeze_epochs", "1"], "an epoch-based schedule"),
    (["--max_steps", "2", "--sampler", "balanced"], "--sampler balanced needs the whole dataset"),
    (["--max_steps", "2", "--class_weighting", "balanced"], "--class_weighting balanced needs the whole dataset"),
    (["--max_steps", "2", "--on_bad_image", "skip"], "--on_bad_image skip needs the whole dataset"),
])
def test_flags_that_need_the_length_are_refused_in_one_line_before_loading(flags, message, capsys, monkeypatch, tmp_path):
    import hf_transfer.streaming
    from hf_transfer.cli import main

    monkeypatch.setattr(hf_transfer.streaming, "load_streaming_data", lambda *a: pytest.fail("the data loaded"))
    out = tmp_path / "never-written"
    with pytest.raises(SystemExit) as exited:
        main(["finetune", "--dataset_name", str(tmp_path), "--streaming", "--output_dir", str(out), *flags])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_other_jobs_refuse_streaming(tmp_path):
    from hf_transfer.arguments import DataArguments
    from hf_transfer.errors import TransferError

    with pytest.raises(TransferError, match="--streaming is for fine-tuning"):
        DataArguments(dataset_name=str(tmp_path), streaming=True).load(0)


def _run(processes: int, parquet_dir: Path, tmp_path: Path, backbone: Path):
    record, out = tmp_path / f"record{processes}", tmp_path / f"out{processes}"
    record.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "HF_TRANSFER_TEST_RECORD": str(record),
           "HF_TRANSFER_NUM_THREADS": "1"}
    script = [str(ROOT / "tests" / "streaming_recipe.py"), "--model_name_or_path", str(backbone), "--dataset_name",
              str(parquet_dir), "--streaming", "--max_steps", "3", "--per_device_train_batch_size", "4",
              "--max_eval_samples", "6", "--image_size", "32", "--output_dir", str(out), "--dataloader_num_workers", "0"]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        accelerate = Path(sys.executable).with_name("accelerate")
        cmd = [str(accelerate), "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"),
               *script, "--use_cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in range(processes)]
    return ranks, json.loads((out / "all_results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_streaming_finetune_trains_each_process_on_its_own_rows(processes, parquet_dir, tmp_path):
    import torch

    from hf_transfer import load_backbone
    from hf_transfer.saving import save_model_folder

    torch.manual_seed(0)
    labels = [f"c{i:02d}" for i in range(ROWS)]
    save_model_folder(load_backbone("test_resnet", labels=labels, pretrained=False), tmp_path / "backbone", image_size=32)
    ranks, results = _run(processes, parquet_dir, tmp_path, tmp_path / "backbone")
    seen = [[label for batch in rank["batches"] for label in batch] for rank in ranks]
    assert [rank["processes"] for rank in ranks] == [processes] * processes
    assert all(len(rank["batches"]) == 3 and all(len(b) == 4 for b in rank["batches"]) for rank in ranks)
    assert all(len(set(share)) == len(share) for share in seen)  # 12 rows of 42: no row twice within a process
    if processes == 2:
        assert not set(seen[0]) & set(seen[1])  # disjoint shares
    assert all(label >= 6 for share in seen for label in share)  # never a validation row
    assert results["eval_samples"] == 6 and "train_samples" not in results
    if processes == 1:
        _assert_served_like_streamed(parquet_dir, tmp_path / "record1", tmp_path / "out1", tmp_path)


PIPELINE_SCRIPT = """
import json, sys
from transformers import pipeline
folder, paths = json.loads(sys.argv[1])
classify = pipeline("image-classification", model=folder)
every = classify.model.config.num_labels  # top_k=None gives 5
print(json.dumps([{r["label"]: r["score"] for r in classify(path, top_k=every)} for path in paths]))
"""


def _assert_served_like_streamed(parquet_dir, record, folder, tmp_path):
    """The streamed run's validation images through pipeline() in a process without hf_transfer: per image, the
    same log-probabilities as the run computed on its streamed data path (48 classes of a random head: the
    probabilities sit near 1/48, so log-probabilities, not probabilities, show a drift). Measured at most 1.2e-4;
    a nearest-neighbour resize instead of the processor's gives 0.11, a mirrored image 0.03."""
    import datasets
    from conftest import run_without_hf_transfer

    run = json.loads((record / "validation.json").read_text())
    rows = datasets.load_dataset("parquet", data_files=str(parquet_dir / "*.parquet"), split="train")
    names = rows.features["label"].names
    paths = []
    for label in run["labels"]:  # one row per class: the label names the image
        path = tmp_path / f"served_{label}.png"
        rows[label]["image"].save(path)
        paths.append(str(path))
    served = run_without_hf_transfer(PIPELINE_SCRIPT, json.dumps([str(folder), paths]), tmp_path=tmp_path)
    logits = np.asarray(run["logits"], dtype=np.float64)
    run_log = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    served_log = np.log([[scores[name] for name in names] for scores in served])
    worst = float(np.abs(run_log - served_log).max())
    assert worst <= 2e-3, f"a served log-probability differs from the streamed run's by {worst:.2e}"


def test_a_label_column_that_is_not_a_class_label_is_refused(tmp_path):
    import datasets

    from hf_transfer.errors import TransferError

    folder = tmp_path / "data"
    folder.mkdir()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    images = [np.zeros((4, 4, 3), dtype=np.uint8)] * 2
    datasets.Dataset.from_dict({"image": images, "label": ["cat", "dog"]}, features=features).to_parquet(
        str(folder / "train.parquet"))
    with pytest.raises(TransferError, match="label column 'label' is Value, not a ClassLabel"):
        _load(folder)


def test_an_image_folder_streams_with_its_class_folders_as_labels(tmp_path):
    from PIL import Image

    from hf_transfer.arguments import DataArguments

    for c, name in enumerate(("cat", "dog")):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 60 * c + 10 * i, dtype=np.uint8)).save(tmp_path / "train" / name / f"{i}.png")
    data = DataArguments(train_dir=str(tmp_path / "train"), streaming=True, max_eval_samples=2).load(0, allow_streaming=True)
    assert data.labels == ["cat", "dog"] and data.source == f"imagefolder:{tmp_path / 'train'}"
    held_out = {c["path"] for c in data.splits["validation"]["image"]}
    trained = [row["image"]["path"] for row in data.splits["train"]]
    assert len(held_out) == 2 and len(trained) == 6 and not held_out & set(trained)


def test_the_check_of_a_streamed_head_with_bytes_is_cached(parquet_dir, tmp_path, monkeypatch):
    import hf_transfer.datacheck as datacheck

    monkeypatch.setenv("HF_TRANSFER_DATACHECK_CACHE", str(tmp_path / "check"))
    first = _load(parquet_dir, max_eval_samples=6)
    monkeypatch.setattr(datacheck, "check_images", lambda *a, **k: pytest.fail("checked again"))
    again = _load(parquet_dir, max_eval_samples=6)
    assert not first.check.cached and again.check.cached and again.check.images == first.check.images
