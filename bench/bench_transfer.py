#!/usr/bin/env python
"""Cost of the transfer core on EfficientNet-Lite0 (embedded weights), measured side by side in one run.

1. Training step time (forward + backward + AdamW step) for full fine-tuning, `--freeze fraction:0.5` and
   `--freeze backbone`, next to a plain forward pass, all on the same batch; repeats are interleaved and the
   medians reported. Target: head-only training <= 1.3x a forward pass.
2. TransferTrainer against plain transformers.Trainer, same full fine-tuning setup and data (steps/s), runs
   interleaved. Target: overhead < 3%.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/bench_transfer.py [--repeats 5] [--out bench/results/transfer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hf_transfer import load_backbone
from hf_transfer.plan import TransferConfig, TransferPlan
from hf_transfer.trainer import BatchNormPolicy, TransferTrainer

LABELS = [str(i) for i in range(10)]


def lite0():
    torch.manual_seed(0)
    return load_backbone("embedded:efficientnet_lite0", labels=LABELS).to(memory_format=torch.channels_last)


class StepBench:
    """One configuration: a model, its plan and optimizer, and a timed training step (or forward pass)."""

    def __init__(self, freeze: str | None, batch):
        self.model, self.batch = lite0(), batch
        if freeze is None:  # plain forward pass, eval mode, no graph
            self.model.eval()
            self.optimizer = None
            return
        plan = TransferPlan.build(self.model, TransferConfig(freeze=freeze, learning_rate=1e-2))
        plan.apply_freeze(self.model, 0)
        policy = BatchNormPolicy(self.model)
        policy.set(plan.frozen_batchnorm(self.model, 0))
        self.optimizer = torch.optim.AdamW(plan.optimizer_groups(self.model), fused=True)
        self.model.train()

    def step(self) -> float:
        start = time.perf_counter()
        if self.optimizer is None:
            with torch.no_grad():
                self.model(pixel_values=self.batch["pixel_values"])
        else:
            loss = self.model(**self.batch).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


class Images(torch.utils.data.Dataset):
    def __init__(self, n, size):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class StepTimer:
    """Trainer callback recording each optimizer step's wall time (medians shrug off bursts on a shared machine)."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.seconds.append(time.perf_counter() - timer.start)

        self.seconds: list[float] = []
        self.callback = _Callback()


def trainer_run(kind: str, dataset, steps: int, batch_size: int) -> tuple[float, list[float]]:
    """(steps/s of the whole run, per-step seconds without the first step) for plain Trainer or TransferTrainer."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, use_cpu=True, max_steps=steps, per_device_train_batch_size=batch_size,
                                 learning_rate=1e-3, weight_decay=0.01, warmup_steps=0, report_to=[], save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True, remove_unused_columns=False, seed=0,
                                 dataloader_num_workers=0)
        model, timer = lite0(), StepTimer()
        if kind == "plain":
            trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[timer.callback])
        else:
            trainer = TransferTrainer(model=model, args=args, train_dataset=dataset, callbacks=[timer.callback],
                                      transfer_config=TransferConfig(learning_rate=1e-3, backbone_lr_multiplier=1.0))
        result = trainer.train()
        return steps / result.metrics["train_runtime"], timer.seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps_per_repeat", type=int, default=3)
    parser.add_argument("--trainer_steps", type=int, default=8)
    parser.add_argument("--trainer_repeats", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "transfer.json"))
    opts = parser.parse_args()
    if os.environ.get("HF_TRANSFER_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["HF_TRANSFER_NUM_THREADS"]))

    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.randn(opts.batch_size, 3, opts.image_size, opts.image_size, generator=g)
             .contiguous(memory_format=torch.channels_last),
             "labels": torch.randint(0, 10, (opts.batch_size,), generator=g)}
    configs = {"forward": None, "full": "none", "fraction_0.5": "fraction:0.5", "backbone": "backbone"}
    benches = {name: StepBench(freeze, batch) for name, freeze in configs.items()}
    for bench in benches.values():  # warm-up: allocator, optimizer state, oneDNN kernels
        bench.step(), bench.step()
    times: dict[str, list[float]] = {name: [] for name in benches}
    for _ in range(opts.repeats):  # interleaved, so machine noise hits every configuration alike
        for name, bench in benches.items():
            times[name] += [bench.step() for _ in range(opts.steps_per_repeat)]
    median = {name: statistics.median(values) for name, values in times.items()}

    dataset = Images(opts.batch_size * opts.trainer_steps, opts.image_size)
    trainer_sps: dict[str, list[float]] = {"plain": [], "transfer": []}
    step_seconds: dict[str, list[float]] = {"plain": [], "transfer": []}
    trainer_run("plain", dataset, 2, opts.batch_size)  # warm-up
    for r in range(opts.trainer_repeats):  # alternate the order so neither trainer always runs first
        for kind in (("plain", "transfer") if r % 2 == 0 else ("transfer", "plain")):
            run_sps, seconds = trainer_run(kind, dataset, opts.trainer_steps, opts.batch_size)
            trainer_sps[kind].append(run_sps)
            step_seconds[kind] += seconds
    # steps/s from the median step time: robust to the bursts of other jobs on a shared machine
    sps = {kind: 1.0 / statistics.median(values) for kind, values in step_seconds.items()}

    result = {
        "model": "embedded:efficientnet_lite0 (channels_last)",
        "batch": [opts.batch_size, 3, opts.image_size, opts.image_size],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "repeats": opts.repeats,
        "steps_per_repeat": opts.steps_per_repeat,
        "step_seconds_median": {k: round(v, 4) for k, v in median.items()},
        "step_seconds_all": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "ratio_to_forward": {k: round(v / median["forward"], 3) for k, v in median.items()},
        "head_only_vs_forward": round(median["backbone"] / median["forward"], 3),
        "head_only_target": 1.3,
        "trainer_steps": opts.trainer_steps,
        "trainer_steps_per_second_median": {k: round(v, 4) for k, v in sps.items()},
        "trainer_steps_per_second_method": "1 / median optimizer-step time over all interleaved runs (first step of each run dropped)",
        "trainer_run_steps_per_second_all": {k: [round(x, 4) for x in v] for k, v in trainer_sps.items()},
        "trainer_run_steps_per_second_median": {k: round(statistics.median(v), 4) for k, v in trainer_sps.items()},
        "transfer_trainer_overhead": round(sps["plain"] / sps["transfer"] - 1, 4),
        "overhead_target": 0.03,
        "note": "shared, noisy 2-core CPU machine; medians of interleaved repeats",
    }
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("step_seconds_median", "ratio_to_forward", "head_only_vs_forward",
                                             "trainer_steps_per_second_median", "transfer_trainer_overhead")}, indent=2))


if __name__ == "__main__":
    main()
