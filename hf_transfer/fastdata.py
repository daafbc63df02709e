"""Images decoded and resized once into a uint8 tensor store; augmentation and normalization per batch.

The lazy path (`transforms.with_transforms`) decodes, converts and resizes every image again at every step and
every evaluation. On the embedded default (28 px MNIST -> 96 px, bicubic) that per-image work took 65-70 ms of
a 32-image batch on the shared 2-core CPU, while the same resize run once over a batch of images costs ~3 ms per
64 images (one interpolation call instead of 64). So when the split fits in memory:

* decode + RGB + the deterministic part of the eval transform (Resize, CenterCrop) run once, batched per image
  size, into a (N, 3, S, S) uint8 tensor (4,500 images at 96 px: 124 MB);
* the random augmentation of the preset (flip, affine) runs per sample on those uint8 tensors, exactly where
  `build_transform` applies it (after resize and crop, on tensors);
* `PixelBatchCollator` converts to float, normalizes and lays out the batch in the model's memory format.

The transform pieces are `build_transform`'s own, so the pixels are bit-identical to the lazy path's (checked in
tests/test_fastdata.py). Presets whose randomness needs the original image (`strong`: random-resized-crop) and
splits too large for the budget keep the lazy path.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torchvision.transforms import v2

from .runtime import local_processes, progress
from .transforms import build_transform, decode_image

# Budget for all prepared splits together; HF_TRANSFER_IMAGE_STORE_BYTES overrides it (0 turns the store off).
DEFAULT_STORE_BYTES = 4 << 30
CHUNK = 256  # images decoded before one batched resize: bounds the memory held by full-size originals


def store_budget_bytes() -> int:
    """This process's share of the machine's budget: every local process holds its own store, so 8 GPU processes
    with a per-process budget would take 8 times the memory the budget states."""
    explicit = os.environ.get("HF_TRANSFER_IMAGE_STORE_BYTES")
    if explicit is not None:
        machine = int(explicit)
    else:
        try:  # at most a quarter of the machine's memory
            physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            physical = 4 * DEFAULT_STORE_BYTES
        machine = min(DEFAULT_STORE_BYTES, physical // 4)
    return machine // local_processes()


MAX_LOADER_WORKERS = 8


def cores_per_process() -> int:
    """The CPU cores this process may use (its affinity mask), shared among the local processes."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // local_processes())


def resolve_loader_workers(args, splits: dict) -> str | None:
    """--dataloader_num_workers left unset: worker processes when any split decodes images per step (the lazy path),
    none when every split is in the in-memory store (indexing a tensor: workers would only add copies).

    Workers: this process's share of the cores less one for the training loop (at least 1, at most 8), persistent
    across epochs (no re-fork, no re-import each epoch) and prefetching 4 batches each, so decoding overlaps the
    step. -> a line saying what was chosen (None when the user chose)."""
    if not getattr(args, "dataloader_num_workers_was_defaulted", False):
        return None
    lazy = [name for name, split in splits.items() if not isinstance(split, PreparedImages)]
    if not lazy:
        args.dataloader_num_workers = 0
        return None
    workers = max(1, min(MAX_LOADER_WORKERS, cores_per_process() - 1))
    args.dataloader_num_workers = workers
    args.dataloader_persistent_workers = True
    args.dataloader_prefetch_factor = args.dataloader_prefetch_factor or 4
    args.dataloader_num_workers_was_defaulted = False
    return (f"images decoded per step ({', '.join(lazy)}): {workers} data-loader worker process"
            f"{'es' if workers > 1 else ''} per training process (persistent, {args.dataloader_prefetch_factor} "
            "batches prefetched each); --dataloader_num_workers sets another number")


class TransformStages:
    """`build_transform`'s Compose cut into: to uint8 tensor | deterministic resize/crop | random augmentation |
    float + normalize. ``None`` from `split` when the transform does not have that shape (e.g. random-resized-crop
    first), so the caller keeps the lazy path."""

    def __init__(self, to_tensor, prepare, augment, finish):
        self.to_tensor, self.prepare, self.augment, self.finish = to_tensor, prepare, augment, finish

    @classmethod
    def split(cls, transform) -> "TransformStages | None":
        steps = list(getattr(transform, "transforms", []))
        kinds = [type(step) for step in steps]
        if v2.PILToTensor not in kinds or v2.ToDtype not in kinds:
            return None
        to_tensor_end = kinds.index(v2.PILToTensor) + 1
        finish_start = kinds.index(v2.ToDtype)
        prepare_end = to_tensor_end
        while prepare_end < finish_start and kinds[prepare_end] in (v2.Resize, v2.CenterCrop):
            prepare_end += 1
        if prepare_end == to_tensor_end or not any(k is v2.Resize for k in kinds[to_tensor_end:prepare_end]):
            return None  # no deterministic resize first: output sizes would differ per image
        augment = steps[prepare_end:finish_start]
        finish = steps[finish_start:]
        return cls(v2.Compose(steps[:to_tensor_end]), v2.Compose(steps[to_tensor_end:prepare_end]),
                   v2.Compose(augment) if augment else None, ScaleNormalize.of(finish) or v2.Compose(finish))


class ScaleNormalize:
    """uint8 image -> float32 / 255, minus mean, over std: `ToDtype(float32, scale=True)` + `Normalize` with the
    same operations in the same order (bit-identical), without v2's per-call dispatch (~0.15 ms an image here)."""

    def __init__(self, mean, std):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    @classmethod
    def of(cls, steps) -> "ScaleNormalize | None":
        if (len(steps) == 2 and isinstance(steps[0], v2.ToDtype) and steps[0].scale
                and steps[0].dtype in (torch.float32, {torch.Tensor: torch.float32}) and isinstance(steps[1], v2.Normalize)):
            return cls(steps[1].mean, steps[1].std)
        return None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)


class PreparedImages(torch.utils.data.Dataset):
    """A split held as uint8 (N, 3, S, S) after decode + resize + crop; items are uint8 until the collator."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor | None, augment: Callable | None = None):
        self.pixels, self.labels, self.augment = pixels, labels, augment

    @classmethod
    def build(cls, split, image_column: str, label_column: str | None, stages: TransformStages) -> "PreparedImages":
        """Decode every image once, resize per chunk in one call per image size, keep the uint8 result."""
        pixels = None
        for start in progress(range(0, len(split), CHUNK), desc="decoding images once", unit="chunk"):
            cells = split[start:start + CHUNK][image_column]
            decoded = [stages.to_tensor(decode_image(cell)) for cell in cells]
            by_size: dict[tuple, list[int]] = {}
            for i, image in enumerate(decoded):
                by_size.setdefault(tuple(image.shape), []).append(i)
            for positions in by_size.values():
                prepared = stages.prepare(torch.stack([decoded[i] for i in positions]))
                if pixels is None:
                    pixels = torch.empty((len(split), *prepared.shape[1:]), dtype=torch.uint8)
                pixels[[start + i for i in positions]] = prepared
        has_labels = label_column is not None and label_column in split.column_names
        labels = torch.as_tensor(split[label_column], dtype=torch.long) if has_labels else None
        return cls(pixels if pixels is not None else torch.empty((0, 3, 1, 1), dtype=torch.uint8), labels, stages.augment)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> dict:
        image = self.pixels[index]
        item = {"pixel_values": self.augment(image) if self.augment is not None else image}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item

    def __getitems__(self, indices: list[int]) -> list[dict]:
        return [self[i] for i in indices]


class PixelBatchCollator:
    """Stacks items into one batch in the model's memory format (channels_last for channels_last CNNs, so the first
    convolution does not reorder its input); uint8 pixels (from `PreparedImages`) are converted and normalized.

    Image by image on purpose: a 27k-value image stays under torch's parallel grain, so these copies never wait on
    OpenMP threads. On the busy shared CPU, one batched normalize + channels_last copy (884k values, 2 threads)
    took 32-40 ms against 1.3 ms single-threaded; image by image the whole batch takes ~1-2 ms on a quiet or busy
    machine, with the same values (elementwise ops).
    """

    def __init__(self, finish: Callable | None, memory_format: torch.memory_format = torch.contiguous_format):
        self.finish, self.memory_format = finish, memory_format

    def __call__(self, features: list[dict]) -> dict:
        images = [f["pixel_values"] for f in features]
        if self.finish is not None:
            images = [self.finish(x) if x.dtype == torch.uint8 else x for x in images]
        pixels = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype, memory_format=self.memory_format)
        for row, image in zip(pixels, images):
            row.copy_(image)
        batch = {"pixel_values": pixels}
        if "labels" in features[0]:
            batch["labels"] = torch.as_tensor([int(f["labels"]) for f in features], dtype=torch.long)
        return batch


class SubsetImageStore:
    """Splits that are row subsets of one base split (cross-validation folds) share one decode of the base.

    ``rows`` maps a split name to its row indices in ``base``. The base is decoded and resized once per
    deterministic transform (the ``prepare`` stage: resize / crop, which every fold of one run shares); each split
    gets its rows of those pixels with its own augmentation.
    """

    def __init__(self, base, rows: dict):
        self.base, self.rows = base, {name: torch.as_tensor(idx, dtype=torch.long) for name, idx in rows.items()}
        self.pixels: dict[str, PreparedImages] = {}

    def with_rows(self, rows: dict) -> "SubsetImageStore":
        """Another set of subsets of the same base, sharing the pixels decoded so far."""
        other = SubsetImageStore(self.base, rows)
        other.pixels = self.pixels
        return other

    def prepared(self, name: str, image_column: str, label_column: str, stages: TransformStages) -> PreparedImages:
        from datasets import Image

        key = repr((image_column, label_column, stages.to_tensor, stages.prepare))
        if key not in self.pixels:
            raw = self.base.cast_column(image_column, Image(decode=False))
            self.pixels[key] = PreparedImages.build(raw, image_column, label_column, stages)
        whole, rows = self.pixels[key], self.rows[name]
        labels = whole.labels[rows] if whole.labels is not None else None
        return PreparedImages(whole.pixels[rows], labels, stages.augment)


def prepare_splits(data, lazy_splits: dict, data_cfg: dict, *, image_size: int | None, augmentation: str,
                   channels_last: bool = False) -> tuple[dict, PixelBatchCollator, str]:
    """-> (splits, collator, one line saying what was prepared). Splits that cannot be prepared (preset
    `strong`, over the memory budget) stay the lazy ones from `with_transforms`."""
    from datasets import Image

    budget = store_budget_bytes()
    size = int(image_size or data_cfg["input_size"][-1])
    streamed = [name for name, s in lazy_splits.items() if not hasattr(s, "__len__")]  # --streaming: read as it trains
    needed = sum(len(s) for name, s in lazy_splits.items() if name not in streamed) * 3 * size * size
    eval_stages = TransformStages.split(build_transform(data_cfg, image_size=image_size, augmentation="none"))
    out, prepared = dict(lazy_splits), []
    if budget > 0 and needed <= budget and eval_stages is not None:
        for name, raw in data.splits.items():
            if name not in lazy_splits or name in streamed:
                continue
            preset = augmentation if name == "train" else "none"
            stages = TransformStages.split(build_transform(data_cfg, image_size=image_size, augmentation=preset))
            if stages is None:
                continue
            subsets = getattr(data, "subset_store", None)
            if subsets is not None and name in subsets.rows:
                out[name] = subsets.prepared(name, data.image_column, data.label_column, stages)
            else:
                raw = raw.cast_column(data.image_column, Image(decode=False))
                out[name] = PreparedImages.build(raw, data.image_column, data.label_column, stages)
            prepared.append(name)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    collator = PixelBatchCollator(eval_stages.finish if eval_stages is not None else None, memory_format)
    if prepared:
        note = (f"images decoded and resized once into memory ({', '.join(prepared)}: "
                f"{sum(len(out[n]) for n in prepared) * 3 * size * size / 2**20:.0f} MiB uint8)")
    else:
        note = ("images decoded per step" + (f" (need {needed / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB; "
                                              "HF_TRANSFER_IMAGE_STORE_BYTES raises it)" if needed > budget else ""))
    return out, collator, note
