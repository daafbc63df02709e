#!/usr/bin/env python
"""The default fine-tune (`run_finetune`, as `recipes/finetune.py` runs it) against a bare PyTorch loop, side by side.

Same model (embedded EfficientNet-Lite0, channels_last), data (embedded MNIST train split, 96 px, bicubic, mean/std
0.5), batch 32, AdamW (fused) with the plan's per-parameter lrs and weight decay (head 1e-2, body 1e-3; no decay on
biases and norm weights), cosine schedule with 5 % warm-up, threads. The bare loop is `bare_loop` below: a DataLoader
with per-image PIL decode + resize + normalize (no workers), forward, cross-entropy, backward, step. Rounds alternate
the two (order swapped each round); per-step times are medians over all rounds after warm-up steps.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_loop.py                 # speed: 3 rounds x 12 steps (+ image folder)
    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_loop.py --accuracy      # + one full epoch of each, accuracy

Writes bench/results/loop.json (an existing file's other sections are kept when only one mode runs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

import hf_transfer.fastdata
import hf_transfer.trainer
from hf_transfer.arguments import DataArguments, ModelArguments
from hf_transfer.backbones import load_backbone
from hf_transfer.data import load_image_classification_data
from hf_transfer.jobs.finetune import run_finetune
from hf_transfer.plan import TransferConfig, TransferPlan
from hf_transfer.training_args import TransferTrainingArguments

KEYS = ("data", "forward", "backward", "optimizer", "grad_clip", "other")
MODEL, SIZE, BATCH, HEAD_LR, BODY_LR, WD, SEED = "embedded:efficientnet_lite0", 96, 32, 1e-2, 1e-3, 0.01, 42


class StepClock:
    """Per-step seconds by part; `total` is wall time from one optimizer step's end to the next one's."""

    def __init__(self):
        self.steps: list[dict] = []
        self.current: dict = defaultdict(float)
        self.last_end = None

    @contextlib.contextmanager
    def part(self, key):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.current[key] += time.perf_counter() - start

    def start(self):
        self.last_end = time.perf_counter()

    def end_step(self):
        now = time.perf_counter()
        step = dict(self.current)
        step["total"] = now - self.last_end
        step["other"] = step["total"] - sum(v for k, v in step.items() if k not in ("total", "other"))
        self.steps.append(step)
        self.current, self.last_end = defaultdict(float), now


# ----------------------------------------------------------------------------------------- the bare loop (floor)
def bare_loop(train_cells, labels, max_steps, clock, eval_cells=None, eval_labels=None, seed=SEED):
    """Plain PyTorch: PIL decode + resize + normalize in a DataLoader, forward, loss, backward, AdamW, cosine."""
    from PIL import Image
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.Resize(SIZE, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)])
    decode = lambda cell: transform(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))  # noqa: E731
    loader = torch.utils.data.DataLoader(list(zip(train_cells, labels)), batch_size=BATCH, shuffle=True, collate_fn=lambda b: (
        torch.stack([decode(cell) for cell, _ in b]), torch.tensor([y for _, y in b])))
    torch.manual_seed(seed)
    model = load_backbone(MODEL, labels=[str(i) for i in range(10)]).timm_model.to(memory_format=torch.channels_last)
    groups = {}  # (head?, decay?) -> params: the same per-parameter lr / weight decay as the library's plan
    for name, p in model.named_parameters():
        groups.setdefault((name.startswith("classifier"), p.ndim > 1), []).append(p)
    optimizer = torch.optim.AdamW([{"params": ps, "lr": HEAD_LR if head else BODY_LR, "weight_decay": WD if decay else 0.0}
                                   for (head, decay), ps in groups.items()], fused=True)
    warmup = math.ceil(0.05 * max_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: s / max(1, warmup) if s < warmup else
                                                 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, max_steps - warmup))))
    model.train()
    clock.start()
    batches = iter(loader)
    for _ in range(max_steps):
        with clock.part("data"):
            x, y = next(batches)
            x = x.contiguous(memory_format=torch.channels_last)
        with clock.part("forward"):
            loss = F.cross_entropy(model(x), y)
        with clock.part("backward"):
            loss.backward()
        with clock.part("optimizer"):
            optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        clock.end_step()
    if eval_cells is None:
        return model, None
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(eval_cells), 64):
            x = torch.stack([decode(c) for c in eval_cells[i:i + 64]]).contiguous(memory_format=torch.channels_last)
            correct += (model(x).argmax(-1) == torch.tensor(eval_labels[i:i + 64])).sum().item()
    return model, correct / len(eval_cells)


# ------------------------------------------------------------------------------------- the library, instrumented
class TimedTransferTrainer(hf_transfer.trainer.TransferTrainer):
    """TransferTrainer with a StepClock around its parts; run_finetune builds it (the module attribute is swapped)."""

    last: "TimedTransferTrainer | None" = None

    def __init__(self, *args, **kwargs):
        from transformers import TrainerCallback

        super().__init__(*args, **kwargs)
        self.clock = clock = StepClock()
        TimedTransferTrainer.last = self
        backward = self.accelerator.backward

        def timed_backward(*a, **k):
            with clock.part("backward"):
                return backward(*a, **k)

        self.accelerator.backward = timed_backward

        class Marks(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                clock.start()

            def on_pre_optimizer_step(self, args, state, control, **kw):
                clock.opt_start = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kw):
                clock.current["optimizer"] += time.perf_counter() - clock.opt_start

            def on_step_end(self, args, state, control, **kw):
                clock.end_step()

        self.add_callback(Marks())

    def get_batch_samples(self, *args, **kwargs):
        with self.clock.part("data"):
            return super().get_batch_samples(*args, **kwargs)

    def compute_loss(self, *args, **kwargs):
        with self.clock.part("forward"):
            return super().compute_loss(*args, **kwargs)

    def _clip_grad_norm(self, model):
        with self.clock.part("grad_clip"):
            return super()._clip_grad_norm(model)


def library_run(max_steps, out_dir, *, train_dir=None, eval_samples=None, full_epoch=False, seed=SEED):
    """run_finetune with the recipe's defaults; -> (per-step records, metrics, seconds preparing the image store)."""
    prepared = {}
    original = hf_transfer.fastdata.prepare_splits

    def timed_prepare(*a, **k):
        start = time.perf_counter()
        result = original(*a, **k)
        prepared["seconds"], prepared["note"] = time.perf_counter() - start, result[2]
        return result

    hf_transfer.trainer.TransferTrainer, hf_transfer.fastdata.prepare_splits = TimedTransferTrainer, timed_prepare
    try:
        training = TransferTrainingArguments(output_dir=out_dir, overwrite_output_dir=True, disable_tqdm=True, report_to="none", seed=seed,
                                             **({} if full_epoch else {"max_steps": max_steps, "eval_strategy": "no"}))
        model_args = ModelArguments(image_size=SIZE if train_dir else None)  # a folder would default to 224 px
        metrics = run_finetune(model_args, DataArguments(train_dir=train_dir, max_eval_samples=eval_samples), training)
    finally:
        hf_transfer.trainer.TransferTrainer = TimedTransferTrainer.__mro__[1]
        hf_transfer.fastdata.prepare_splits = original
    return TimedTransferTrainer.last.clock.steps, metrics, prepared


# ------------------------------------------------------------------------------------------------- reporting
def summarize(steps: list[dict]) -> dict:
    totals = [s["total"] for s in steps]
    return {
        "steps": len(steps),
        "seconds_per_step_median": round(statistics.median(totals), 4),
        "seconds_per_step_mean": round(statistics.fmean(totals), 4),
        "breakdown_median": {k: round(statistics.median(s.get(k, 0.0) for s in steps), 4) for k in KEYS},
        "breakdown_mean": {k: round(statistics.fmean(s.get(k, 0.0) for s in steps), 4) for k in KEYS},
        "data_share_of_mean": round(statistics.fmean(s.get("data", 0.0) for s in steps) / statistics.fmean(totals), 3),
    }


def check_same_optimizer_groups():
    """The bare loop's (lr, weight decay) per parameter equals the library plan's: asserted, not assumed."""
    model = load_backbone(MODEL, labels=[str(i) for i in range(10)])
    plan = TransferPlan.build(model, TransferConfig(learning_rate=HEAD_LR, weight_decay=WD))
    for group in plan.groups:
        for name in group.params:
            p = model.get_parameter(name)
            head = name.startswith("timm_model.classifier")
            expected = (HEAD_LR if head else BODY_LR, WD if p.ndim > 1 else 0.0)
            assert math.isclose(group.lr, expected[0]) and math.isclose(group.weight_decay, expected[1]), (name, group)


def write_mnist_folder(root: Path) -> Path:
    """The embedded MNIST written as train/<class>/<i>.png: what users have (5,000 files; 10 % held out as usual)."""
    from hf_transfer.data import EMBEDDED_DATASETS
    from PIL import Image

    images, labels, names = EMBEDDED_DATASETS["mnist"].build()
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / "train" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return root / "train"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round and side")
    parser.add_argument("--warmup_steps", type=int, default=2, help="untimed first steps of each run")
    parser.add_argument("--accuracy", action="store_true", help="also one full epoch of each, validation accuracy")
    parser.add_argument("--accuracy_only", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="seeds of the accuracy runs")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "loop.json"))
    opts = parser.parse_args()
    out = Path(opts.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    result = {}
    result.update({"model": MODEL + " (channels_last)", "dataset": "embedded:mnist, 4,500 train / 500 validation",
                   "image_size": SIZE, "batch": BATCH, "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                   "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)")})
    check_same_optimizer_groups()
    from datasets import Image

    data = load_image_classification_data(seed=SEED)  # the library's own split, so both sides see the same images
    raw = {k: s.cast_column("image", Image(decode=False)) for k, s in data.splits.items()}
    train_cells, train_labels = raw["train"]["image"], raw["train"]["label"]
    steps = opts.steps + opts.warmup_steps

    with tempfile.TemporaryDirectory() as tmp:
        if not opts.accuracy_only:
            records = {"library": [], "bare": [], "library_image_folder": [], "library_image_folder_lazy": []}
            prepare_seconds = defaultdict(list)
            folder = write_mnist_folder(Path(tmp) / "mnist_png")
            for r in range(opts.rounds):
                for side in (("library", "bare") if r % 2 == 0 else ("bare", "library")):
                    if side == "bare":
                        clock = StepClock()
                        bare_loop(train_cells, train_labels, steps, clock)
                        records["bare"] += clock.steps[opts.warmup_steps:]
                    else:
                        recs, _, prep = library_run(steps, f"{tmp}/lib", eval_samples=64)
                        records["library"] += recs[opts.warmup_steps:]
                        prepare_seconds["library"].append(prep["seconds"])
                    print(f"round {r} {side}: {statistics.median(s['total'] for s in records[side][-opts.steps:]):.3f} s/step",
                          flush=True)
                # an image folder on disk, with the prepared store and with per-step decoding (store off), alternated
                for kind in (("image_folder", "image_folder_lazy") if r % 2 == 0 else ("image_folder_lazy", "image_folder")):
                    budget = 0 if kind.endswith("lazy") else hf_transfer.fastdata.DEFAULT_STORE_BYTES
                    os.environ["HF_TRANSFER_IMAGE_STORE_BYTES"] = str(budget)
                    try:
                        recs, _, prep = library_run(steps, f"{tmp}/{kind}", train_dir=str(folder), eval_samples=64)
                    finally:
                        os.environ.pop("HF_TRANSFER_IMAGE_STORE_BYTES")
                    records[f"library_{kind}"] += recs[opts.warmup_steps:]
                    prepare_seconds[f"library_{kind}"].append(prep["seconds"])
            summary = {k: summarize(v) for k, v in records.items()}
            for k, v in prepare_seconds.items():
                summary[k]["image_store_prepare_seconds_median"] = round(statistics.median(v), 2)
            result["speed"] = {
                "method": f"{opts.rounds} rounds, each: library run then bare loop (order swapped every round), "
                          f"{opts.steps} timed steps after {opts.warmup_steps} warm-up steps; library = run_finetune "
                          "with recipe defaults but max_steps and eval_strategy=no (schedule over the run's steps); "
                          "medians over all timed steps",
                "library": summary["library"],
                "bare": summary["bare"],
                "ratio_library_to_bare": round(summary["library"]["seconds_per_step_median"]
                                               / summary["bare"]["seconds_per_step_median"], 3),
                "target_ratio": 1.15,
                "ratio_library_to_bare_compute_only": round(
                    summary["library"]["seconds_per_step_median"] / statistics.median(
                        s["total"] - s.get("data", 0.0) for s in records["bare"]), 3),
                "ratio_note": "ratio_library_to_bare: against the bare loop as written (it decodes and resizes "
                              "per step, as users' loops do); _compute_only: against its steps minus their data time",
                "image_folder": {
                    "what": "MNIST written as 5,000 PNG files in train/<class>/ (--train_dir, --image_size 96), 10 % held out;"
                            " the prepared store against per-step decoding (HF_TRANSFER_IMAGE_STORE_BYTES=0), alternated",
                    "prepared_store": summary["library_image_folder"],
                    "per_step_decoding": summary["library_image_folder_lazy"],
                },
            }
            write(out, result)  # before the long accuracy part
            print(json.dumps({k: result["speed"][k] for k in ("ratio_library_to_bare",)} |
                             {k: result["speed"][k]["seconds_per_step_median"] for k in ("library", "bare")}))
        if opts.accuracy or opts.accuracy_only:
            # runs of other seeds from earlier invocations are kept: accuracy does not depend on the machine's load
            previous = previous.get("accuracy", {}).get("runs", {})
            runs = {side: [r for r in previous.get(side, []) if r["seed"] not in opts.seeds] for side in ("library", "bare")}
            for n, seed in enumerate(opts.seeds):
                # each seed draws its own validation split in the library: the bare loop uses that same split
                seed_raw = {k: s.cast_column("image", Image(decode=False))
                            for k, s in load_image_classification_data(seed=seed).splits.items()}
                for side in (("library", "bare") if n % 2 == 0 else ("bare", "library")):
                    start = time.perf_counter()
                    if side == "library":
                        recs, metrics, _ = library_run(None, f"{tmp}/full", full_epoch=True, seed=seed)
                        run = {"eval_accuracy": round(metrics["eval_accuracy"], 4),
                               "train_runtime": round(metrics["train_runtime"], 2)}
                    else:
                        clock = StepClock()
                        cells = seed_raw["train"]["image"]
                        _, accuracy = bare_loop(cells, seed_raw["train"]["label"], math.ceil(len(cells) / BATCH), clock,
                                                seed_raw["validation"]["image"], seed_raw["validation"]["label"], seed=seed)
                        recs, run = clock.steps, {"eval_accuracy": round(accuracy, 4)}
                    run.update(seed=seed, wall_seconds=round(time.perf_counter() - start, 2), steps=len(recs),
                               seconds_per_step_median=round(statistics.median(s["total"] for s in recs), 4))
                    runs[side].append(run)
                    print(side, json.dumps(run), flush=True)
                    summarize_accuracy(result, runs)
                    write(out, result)
            print(json.dumps({k: result["accuracy"][k] for k in ("mean_eval_accuracy", "difference_points_of_means")}))
    write(out, result)


def summarize_accuracy(result: dict, runs: dict) -> None:
    """Means over the seeds that both sides have finished."""
    seeds = {r["seed"] for r in runs["library"]} & {r["seed"] for r in runs["bare"]}
    mean = {side: statistics.fmean(r["eval_accuracy"] for r in v if r["seed"] in seeds) if seeds else None
            for side, v in runs.items()}
    result["accuracy"] = {
        "method": "one full epoch per seed and side (141 steps, recipe defaults: neither side clips gradients), "
                  "accuracy on that seed's 500 validation images",
        "runs": runs,
        "mean_eval_accuracy": {k: round(v, 4) if v is not None else None for k, v in mean.items()},
        "seeds_in_means": sorted(seeds),
        "difference_points_of_means": round(100 * (mean["library"] - mean["bare"]), 2) if seeds else None,
        "target_points": 0.5,
    }


def write(out: Path, result: dict) -> None:
    """Merge into the file as it is now: another invocation may have written its section meanwhile."""
    current = json.loads(out.read_text()) if out.is_file() else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(current | result, indent=2) + "\n")


if __name__ == "__main__":
    main()
