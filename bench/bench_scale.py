#!/usr/bin/env python
"""Data at scale: a generated folder of 200,000 small JPEGs (and a 1,000,000-row Arrow dataset) through the real
recipe -> bench/results/scale.json.

Measures, on this machine (CPU), each part named by ``--parts`` (the others already in the file are kept):

* ``first_step_cold`` / ``first_step_warm``: seconds from starting `python recipes/finetune.py --train_dir <folder>`
  to its first training step, stage by stage (the functions the recipe calls are wrapped and timed: imports,
  folder listing and table load, label checks, data check, split, model, store, Trainer, first batch), with the
  caches cold, then warm; ``first_step_before``: the same warm run with the code of ``--before`` (a checkout of
  main), side by side in one invocation;
* ``two_processes`` / ``two_processes_store``: each rank of `accelerate launch --config_file
  recipes/accelerate/cpu_2proc.yaml` (memory at every stage, peak), on the whole folder (decoded per step) and on
  a subset that fits each rank's share of the image-store budget;
* ``data_check``: the image check over every file, first run, cached, and sampled;
* ``loader``: images/s the training loader delivers against the images/s one training step of the default model
  consumes (same batch and image size);
* ``imagenet_decode``: one core decoding + random-resized-cropping ImageNet-sized JPEGs (500x375) to 224 px;
* ``arrow_1m``: a 1,000,000-row dataset of 32 px JPEG bytes, saved with `save_to_disk` and as parquet shards: time
  to first step map-style (check first run, then cached) and with ``--streaming``;
* ``projection``: ImageNet-1k on 8 GPUs from the above (`projection`), written whenever its inputs are present.

    PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 10 python bench/bench_scale.py --images 200000 --before <main> --work <dir>
    PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 10 python bench/bench_scale.py --parts arrow_1m --work <dir>
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = Path(os.environ.get("BENCH_SCALE_CODE", ROOT))  # the checkout whose hf_transfer the recipe runs
sys.path.insert(0, str(CODE))
RESULTS = ROOT / "bench" / "results" / "scale.json"
CLASSES = 100
DISTINCT = 2000  # distinct encoded images; files cycle through them (the check and the decode read each file)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------------------- the folder
def _encoded_images(seed: int, count: int, size: int = 64) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # smooth content: JPEG-like, small files
        image = Image.fromarray(base).resize((size, size), Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def _write_class(args) -> int:
    root, cls, per_class, encoded = args
    folder = Path(root) / f"class_{cls:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        (folder / f"{i:05d}.jpg").write_bytes(encoded[(cls * per_class + i) % len(encoded)])
    return per_class


def generate_folder(root: Path, images: int) -> float:
    """``images`` JPEG files in CLASSES class folders, written by a process pool; -> seconds."""
    from multiprocessing import Pool

    start = time.perf_counter()
    encoded = _encoded_images(0, DISTINCT)
    per_class = images // CLASSES
    with Pool(max(1, os.cpu_count() or 1)) as pool:
        pool.map(_write_class, [(str(root), c, per_class, encoded) for c in range(CLASSES)], chunksize=4)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------- the check
def data_check(root: Path, cache: Path, check_cache: Path) -> dict:
    """The check over every image, first (an empty check cache) and again (read back), and a sampled one."""
    import datasets

    from hf_transfer.data import _load_image_folders
    from hf_transfer.datacheck import checked_images

    start = time.perf_counter()
    splits = datasets.DatasetDict({"train": _load_image_folders({"train": str(root)}, str(cache / "datasets"))["train"]})
    load_s = time.perf_counter() - start
    out = {"images": len(splits["train"]), "load_dataset_s": round(load_s, 2), "load_average": load_average()}
    for name in ("first", "cached"):
        start = time.perf_counter()
        report = checked_images(splits, "image", "full", cache_dir=str(check_cache / "check"))
        seconds = time.perf_counter() - start
        out[f"{name}_s"] = round(seconds, 3)
        out[f"{name}_cached"] = report.cached
        out[f"{name}_bad"] = len(report.bad)
    out["first_images_per_s"] = round(out["images"] / out["first_s"], 1)
    start = time.perf_counter()
    report = checked_images(splits, "image", "sample", cache_dir=str(check_cache / "check-sample"))
    out["sample_s"] = round(time.perf_counter() - start, 3)
    out["sample_images"] = sum(report.sampled.values())
    return out


# ----------------------------------------------------------------------------- recipe runs (first step, memory)
# (module, attribute, stage): the functions the recipe runs before its first step, timed by wrapping them. Names
# missing from a version of the code (the "before" run on main) are skipped.
STAGES = [
    ("hf_transfer.data", "_check_class_folders", "folder layout check"),
    ("hf_transfer.data", "_load_raw", "folder listing + table load"),
    ("hf_transfer.data", "_check_metadata_labels", "label mapping check"),
    ("hf_transfer.data", "_run_data_check", "data check (cache lookup)"),
    ("hf_transfer.data", "_check_class_sets", "class sets"),
    ("hf_transfer.data", "_stratified_split", "split + subsets"),
    ("hf_transfer.data", "load_image_classification_data", "data total"),
    ("hf_transfer.jobs.common", "load_sized_backbone", "model load"),
    ("hf_transfer.jobs.common", "with_transforms", "lazy transforms"),
    ("hf_transfer.fastdata", "prepare_splits", "store / transform setup"),
    ("hf_transfer.trainer", "TransferTrainer.__init__", "trainer init"),
    ("transformers.trainer", "Trainer.get_train_dataloader", "dataloader build"),
]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _wrap_stages(stages: dict) -> None:
    import importlib

    for module_name, attribute, stage in STAGES:
        owner = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        original = getattr(owner, name, None) if owner is not None else None
        if original is None:
            continue

        def timed(*args, __original=original, __stage=stage, **kwargs):
            begin = time.time()
            try:
                return __original(*args, **kwargs)
            finally:
                entry = stages.setdefault(__stage, {"s": 0.0, "calls": 0})
                entry["s"] += time.time() - begin
                entry["calls"] += 1
                entry["rss_after_MiB"] = _rss_mib()
                entry["end_s"] = time.time() - float(os.environ["BENCH_SCALE_T0"])  # since the launch

        setattr(owner, name, timed)


def child() -> None:
    """Inside the recipe's process: record the stages up to the first training step and the peak memory, per
    rank. ``BENCH_SCALE_CODE`` names the checkout whose hf_transfer runs (the "before" run uses main's)."""
    import resource
    import runpy

    record = Path(os.environ["BENCH_SCALE_RECORD"])
    rank = int(os.environ.get("RANK", "0"))
    t0 = float(os.environ["BENCH_SCALE_T0"])
    seen, stages = {"imports_s": None, "stages": {}}, {}
    import hf_transfer.jobs.finetune as job  # the imports every run pays; timed from the launch

    seen["imports_s"] = time.time() - t0
    seen["rss_after_imports_MiB"] = _rss_mib()
    _wrap_stages(stages)
    import hf_transfer.trainer as trainer_module

    step = trainer_module.TransferTrainer.training_step

    def timed_step(self, *args, **kwargs):
        if "first_step_s" not in seen:
            seen["first_step_s"] = time.time() - t0
            from hf_transfer.fastdata import store_budget_bytes

            seen["stages"] = {k: {**v, "s": round(v["s"], 3)} for k, v in stages.items()}
            seen["store_budget_MiB"] = store_budget_bytes() / 2**20
            seen["loader_workers"] = self.args.dataloader_num_workers
            seen["rss_at_first_step_MiB"] = _rss_mib()
            (record / f"rank{rank}.json").write_text(json.dumps(seen))
        return step(self, *args, **kwargs)

    trainer_module.TransferTrainer.training_step = timed_step
    assert job  # imported for its import time
    try:
        sys.argv = [str(CODE / "recipes" / "finetune.py"), *sys.argv[2:]]
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        # ru_maxrss: the peak resident memory of this process (KiB on Linux); children: the largest loader worker
        seen["peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        seen["peak_rss_largest_worker_MiB"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        (record / f"rank{rank}.json").write_text(json.dumps(seen))


def _rounded(value):
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def recipe_run(root: Path, work: Path, name: str, processes: int, cache: Path, steps: int,
               code: Path | None = None, extra: list[str] = (), source: list[str] | None = None) -> dict:
    record = work / f"record-{name}"
    shutil.rmtree(record, ignore_errors=True)
    record.mkdir(parents=True, exist_ok=True)
    flags = [*(source or ["--train_dir", str(root)]), "--max_steps", str(steps), "--max_eval_samples", "128", "--eval_strategy", "no",
             "--per_device_train_batch_size", "32", "--output_dir", str(work / f"out-{name}"), "--overwrite_output_dir",
             "--logging_steps", "1000", *extra]
    code = code or ROOT
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "BENCH_SCALE_RECORD": str(record),
           "BENCH_SCALE_CODE": str(code), "HF_DATASETS_CACHE": str(cache / "datasets"),
           "HF_TRANSFER_DATACHECK_CACHE": str(cache / "check"), "BENCH_SCALE_T0": str(time.time())}
    script = [str(Path(__file__).resolve()), "--child"]
    if processes == 1:
        cmd = [sys.executable, *script, *flags]
    else:
        accelerate = str(Path(sys.executable).with_name("accelerate"))
        cmd = [accelerate, "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"), *script,
               *flags, "--use_cpu"]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in range(processes)]
    notes = [line.split("] ", 1)[-1] for line in result.stdout.splitlines()
             if "decoded" in line or "data check" in line or "engine:" in line or "in memory" in line]
    code_name = "main (before)" if code != ROOT else "this branch"
    return {"code": code_name, "processes": processes, "wall_s": round(wall, 1), "load_average": load_average(),
            "notes": notes, "ranks": [_rounded(r) for r in ranks]}


# ---------------------------------------------------------------------------- loader vs. what a step consumes
def loader_against_step(root: Path, cache: Path, batches: int, steps: int) -> dict:
    import datasets
    import torch

    from hf_transfer import load_backbone_with_adapter
    from hf_transfer.data import _load_image_folders
    from hf_transfer.plan import TransferConfig, TransferPlan
    from hf_transfer.transforms import build_transform, batch_transform
    from hf_transfer.fastdata import cores_per_process, PixelBatchCollator, TransformStages

    model, adapter = load_backbone_with_adapter("embedded:efficientnet_lite0", labels=[str(i) for i in range(CLASSES)])
    cfg = adapter.data_config()
    size = cfg["input_size"][-1]
    split = _load_image_folders({"train": str(root)}, str(cache / "datasets"))["train"]
    split = split.cast_column("image", datasets.Image(decode=False)).shuffle(seed=0)
    transform = build_transform(cfg, augmentation="gentle")
    lazy = split.with_transform(batch_transform(transform, "image", "label"))
    workers = max(1, min(8, cores_per_process() - 1))  # what resolve_loader_workers gives one process here
    collator = PixelBatchCollator(None, torch.channels_last)
    loader = torch.utils.data.DataLoader(lazy, batch_size=32, num_workers=workers, persistent_workers=True,
                                         prefetch_factor=4, collate_fn=collator)
    iterator = iter(loader)
    next(iterator)  # workers started
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    loader_s = time.perf_counter() - start
    del iterator, loader

    model = model.to(memory_format=torch.channels_last)
    plan = TransferPlan.build(model, TransferConfig(learning_rate=1e-2))
    optimizer = torch.optim.AdamW(plan.optimizer_groups(model))
    pixels = torch.randn(32, 3, size, size).to(memory_format=torch.channels_last)
    labels = torch.randint(0, CLASSES, (32,))
    model.train()

    def step():
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    step_s = time.perf_counter() - start
    loader_rate, step_rate = batches * 32 / loader_s, steps * 32 / step_s
    return {"image_size": size, "batch": 32, "loader_workers": workers, "torch_threads": torch.get_num_threads(),
            "loader_images_per_s": round(loader_rate, 1), "step_images_per_s": round(step_rate, 1),
            "ratio": round(loader_rate / step_rate, 2), "load_average": load_average()}


def imagenet_decode(count: int) -> dict:
    """One core: ImageNet-sized JPEGs (500x375, the ImageNet median) decoded and random-resized-cropped to 224."""
    import numpy as np
    import torch
    from PIL import Image

    from hf_transfer.transforms import build_transform, decode_image

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    files = []
    for _ in range(16):
        base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        noise = rng.integers(0, 40, (375, 500, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(base).resize((500, 375), Image.BICUBIC)) // 2 + noise
        buffer = io.BytesIO()
        Image.fromarray(image.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        files.append(buffer.getvalue())
    cfg = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
           "std": (0.229, 0.224, 0.225), "crop_pct": 0.875}
    transform = build_transform(cfg, augmentation="strong")  # random-resized-crop: the ImageNet training recipe
    start = time.perf_counter()
    for i in range(count):
        transform(decode_image({"bytes": files[i % len(files)], "path": None}))
    seconds = time.perf_counter() - start
    return {"images": count, "file_KiB": round(sum(map(len, files)) / len(files) / 1024, 1),
            "images_per_s_one_core": round(count / seconds, 1), "load_average": load_average()}


# ------------------------------------------------------------------------ a 1,000,000-row Arrow dataset
def _unique_jpeg(data: bytes, row: int) -> bytes:
    """The JPEG with a comment segment (FF FE) naming its row after the start marker: every row's bytes differ
    (streaming holds validation out by content), the pixels do not, and nothing is re-encoded."""
    comment = f"row {row}".encode()
    return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]


def arrow_dataset(folder: Path, rows: int, shards: int = 16) -> dict:
    """``rows`` tiny JPEGs (32x32, their bytes inside the table) in CLASSES classes, written twice: with
    `save_to_disk` (``folder/arrow``: what `--dataset_name <folder>` loads map-style) and as parquet shards
    (``folder/parquet``: what `--streaming` reads, as from the Hub)."""
    import datasets

    start = time.perf_counter()
    encoded = _encoded_images(1, DISTINCT, size=32)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"class_{c:03d}" for c in range(CLASSES)])})
    per = rows // shards
    parts = []
    for shard in range(shards):
        ids = range(shard * per, (shard + 1) * per)
        part = datasets.Dataset.from_dict({"image": [{"bytes": _unique_jpeg(encoded[i % DISTINCT], i), "path": None}
                                                     for i in ids],
                                           "label": [i % CLASSES for i in ids]}, features=features)
        (folder / "parquet").mkdir(parents=True, exist_ok=True)
        part.to_parquet(str(folder / "parquet" / f"train-{shard:05d}-of-{shards:05d}.parquet"))
        parts.append(part)
    datasets.concatenate_datasets(parts).save_to_disk(str(folder / "arrow"), num_shards=shards)
    size = sum(f.stat().st_size for f in (folder / "arrow").glob("*.arrow"))
    return {"rows": rows, "shards": shards, "image_px": 32, "arrow_MiB": round(size / 2**20),
            "seconds": round(time.perf_counter() - start, 1), "load_average": load_average()}


def arrow_runs(folder: Path, work: Path, cache: Path) -> dict:
    """Time to first step on the 1M-row dataset: map-style (the data check first, then cached) and streaming."""
    arrow = ["--dataset_name", str(folder / "arrow")]
    parquet = ["--dataset_name", str(folder / "parquet"), "--streaming"]
    return {"map_first": recipe_run(folder, work, "arrow-first", 1, cache, steps=1, source=arrow),
            "map_warm": recipe_run(folder, work, "arrow-warm", 1, cache, steps=1, source=arrow),
            "streaming": recipe_run(folder, work, "arrow-stream", 1, cache, steps=1, source=parquet)}


# ------------------------------------------------------------------- projection to ImageNet-1k on 8 GPUs
IMAGENET_TRAIN = 1_281_167
GPUS = 8
# Not measured here (no GPU): a ResNet-50 bf16 training step of 32 images in about 30 ms on one GPU (issue #19's
# estimate; bench/gpu_check.sh measures it). Every other input below is a measurement from this file.
ASSUMED_GPU_STEP = {"model": "ResNet-50, bf16, batch 32", "step_ms": 30.0, "source": "issue #19 estimate"}


def projection(report: dict) -> dict:
    """ImageNet-1k (1,281,167 training JPEGs) on one machine with 8 GPUs, from the per-image costs measured here
    (2 loaded CPU cores): per-file costs scale with the file count, per-process costs are paid by each process."""
    images = report["images"]
    scale = IMAGENET_TRAIN / images
    cold, warm = report["first_step_cold"]["ranks"][0], report["first_step_warm"]["ranks"][0]
    stages = lambda run, name: run["stages"].get(name, {}).get("s", 0.0)  # noqa: E731
    check = report["data_check"]
    gpu_rate = 32 / (ASSUMED_GPU_STEP["step_ms"] / 1000)
    decode = report["imagenet_decode"]["images_per_s_one_core"]
    per_file_warm = sum(stages(warm, n) for n in ("folder layout check", "folder listing + table load",
                                                   "label mapping check", "class sets", "split + subsets"))
    fixed_warm = warm["imports_s"] + stages(warm, "model load") + stages(warm, "trainer init")
    rows = {
        "folder_table_first_build_s": stages(cold, "folder listing + table load") * scale,
        "data_check_first_s": IMAGENET_TRAIN / check["first_images_per_s"],
        "data_check_cached_s": check["cached_s"],
        "data_check_sample_s": check["sample_s"],
        "first_step_warm_s": fixed_warm + per_file_warm * scale,
        "first_step_warm_per_file_part_s": per_file_warm * scale,
        "gpu_images_per_s": gpu_rate,
        "decode_cores_per_gpu": gpu_rate / decode,
        "decode_cores_for_8_gpus": GPUS * gpu_rate / decode,
        "store_budget_per_process_MiB": report["store_budget_machine_MiB"] / GPUS,
    }
    return {"images": IMAGENET_TRAIN, "gpus": GPUS, "measured_images": images, "assumed_gpu_step": ASSUMED_GPU_STEP,
            **{k: round(v, 2) for k, v in rows.items()}}


PARTS = ("generate", "first_step_cold", "first_step_before", "first_step_warm", "two_processes",
         "two_processes_store", "data_check", "loader", "imagenet_decode", "arrow_1m")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--loader_batches", type=int, default=40)
    parser.add_argument("--train_steps", type=int, default=3)
    parser.add_argument("--arrow_rows", type=int, default=1_000_000)
    parser.add_argument("--parts", default=",".join(PARTS), help="which measurements (comma-separated; the others "
                        "already in the results file are kept)")
    parser.add_argument("--before", default=None, help="a checkout of the code before the change (e.g. a worktree "
                        "of main): its warm first step is timed stage by stage beside this branch's")
    parser.add_argument("--work", default=None, help="a folder kept between invocations (default: a temporary one, "
                        "removed at the end)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    import torch

    from hf_transfer.fastdata import store_budget_bytes

    parts = args.parts.split(",")
    keep = args.work is not None
    work = Path(args.work) if keep else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    output = Path(args.output)
    report = json.loads(output.read_text()) if output.exists() and set(parts) != set(PARTS) else {}
    report.update({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                   "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "images": args.images,
                   "store_budget_machine_MiB": round(store_budget_bytes() / 2**20),
                   "command": "PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 10 python bench/bench_scale.py --images "
                              f"{args.images} --before <worktree of main>"})

    def save(key, value):
        report[key] = value
        print(key, json.dumps(value), flush=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")

    try:
        work.mkdir(parents=True, exist_ok=True)
        root, cache = work / "images", work / "cache"
        if "generate" in parts:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            seconds = generate_folder(root, args.images)
            save("generate", {"seconds": round(seconds, 1), "files": args.images, "classes": CLASSES,
                              "load_average": load_average()})
        if "first_step_cold" in parts:  # builds datasets' table, the folder table and the check cache
            save("first_step_cold", recipe_run(root, work, "cold", 1, cache, steps=1))
        if "first_step_before" in parts and args.before:
            # main's code on the same warm datasets cache; --data_check off, as its check cache is keyed by another
            # fingerprint (a cached check costs ~0.02 s: see data_check.cached_s)
            save("first_step_before", recipe_run(root, work, "before", 1, cache, steps=1, code=Path(args.before),
                                                 extra=["--data_check", "off"]))
        if "first_step_warm" in parts:
            save("first_step_warm", recipe_run(root, work, "warm", 1, cache, steps=1))
        if "two_processes" in parts:
            save("two_processes", recipe_run(root, work, "ddp", 2, cache, steps=3))
        if "two_processes_store" in parts:  # a subset that fits each rank's share of the store budget
            save("two_processes_store", recipe_run(root, work, "ddp-store", 2, cache, steps=3,
                                                   extra=["--max_train_samples", "16000", "--image_size", "112"]))
        if "data_check" in parts:
            save("data_check", data_check(root, cache, work / "check-bench"))
        if "loader" in parts:
            save("loader", loader_against_step(root, cache, args.loader_batches, args.train_steps))
        if "imagenet_decode" in parts:
            save("imagenet_decode", imagenet_decode(200))
        if "arrow_1m" in parts:
            shutil.rmtree(work / "arrow", ignore_errors=True)
            made = arrow_dataset(work / "arrow", args.arrow_rows)
            save("arrow_1m", {"generate": made, **arrow_runs(work / "arrow", work, cache)})
            shutil.rmtree(work / "arrow", ignore_errors=True)
        needed = ("first_step_cold", "first_step_warm", "data_check", "imagenet_decode")
        if all(report.get(k) for k in needed):
            save("projection", projection(report))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
