"""docs/scale.md's tables, from bench/results/scale.json (`bench/bench_scale.py`); registered in render_docs.TABLES."""

from __future__ import annotations

COMMAND = ("PYTHONPATH=. HF_HUB_OFFLINE=1 nice -n 10 python bench/bench_scale.py --images 200000 --before <checkout of main> "
           "--work <folder>, then the same with --parts arrow_1m")
STAGES = ["folder layout check", "folder listing + table load", "label mapping check", "data check (cache lookup)",
          "class sets", "split + subsets", "model load", "store / transform setup", "trainer init"]


def _first_batch(rank: dict) -> float:
    """From the training loader's creation to the first step: worker start and the first batches decoded."""
    return rank["first_step_s"] - rank["stages"]["dataloader build"]["end_s"]


def _data_path_MiB(rank: dict) -> float:
    """Resident memory the data path added: loading, checking and splitting, then the image store."""
    stages = rank["stages"]
    loaded = stages["data total"]["rss_after_MiB"] - rank["rss_after_imports_MiB"]
    return loaded + stages["store / transform setup"]["rss_after_MiB"] - stages["lazy transforms"]["rss_after_MiB"]


def _runs(x: dict) -> list[tuple[str, dict]]:
    names = [("first_step_before", "main, warm caches¹"), ("first_step_cold", "this branch, cold caches"),
             ("first_step_warm", "this branch, warm caches"), ("two_processes", "2 processes, rank 0, warm")]
    return [(label, x[key]) for key, label in names if x.get(key)]


def table_scale_first_step(r) -> str:
    from render_docs import markdown_table, source

    x = r.file("scale")
    runs = _runs(x)
    rows = [["imports (process start to the job)"] + [f"{run['ranks'][0]['imports_s']:.1f} s" for _, run in runs]]
    for stage in STAGES:
        rows.append([stage] + [f"{run['ranks'][0]['stages'].get(stage, {}).get('s', 0.0):.2f} s" for _, run in runs])
    rows.append(["other set-up (plan, engine, Trainer's train())"] + [
        f"{run['ranks'][0]['stages']['dataloader build']['end_s'] - run['ranks'][0]['imports_s'] - sum(run['ranks'][0]['stages'].get(s, {}).get('s', 0.0) for s in STAGES):.1f} s"
        for _, run in runs])
    rows.append(["loader workers start + first batch"] + [f"{_first_batch(run['ranks'][0]):.1f} s" for _, run in runs])
    rows.append(["**time to first step**"] + [f"**{run['ranks'][0]['first_step_s']:.1f} s**" for _, run in runs])
    rows.append(["load average after the run"] + [f"{run['load_average']:.1f}" for _, run in runs])
    text = markdown_table(["stage", *[label for label, _ in runs]], rows)
    text += ("\n¹ main at the start of this work, on the same folder and the same warm `datasets` cache, with "
             "`--data_check off` (its check cache is keyed by another fingerprint; a cached check costs "
             f"{x['data_check']['cached_s']:.3f} s, below). Runs one after another in one invocation, under "
             "`nice -n 10`, on 2 CPU cores shared with other sessions (the advisor suite had priority).\n")
    return text + source(COMMAND, "scale")


def table_scale_data(r) -> str:
    from render_docs import markdown_table, source

    x = r.file("scale")
    check, loader = x["data_check"], x["loader"]
    rows = [
        ["data check, first run", f"{x['images']:,} images in {check['first_s']:.1f} s ({check['first_images_per_s']:,.0f} images/s)",
         f"{check['load_average']:.1f}"],
        ["data check, cached (same fingerprint)", f"{check['cached_s']:.3f} s", ""],
        ["data check `--data_check sample`", f"{check['sample_images']:,} images in {check['sample_s']:.1f} s", ""],
        ["training loader (gentle augmentation, 224 px)", f"{loader['loader_images_per_s']:.1f} images/s with "
         f"{loader['loader_workers']} worker", f"{loader['load_average']:.1f}"],
        ["one training step of the default model (batch 32, 224 px)", f"{loader['step_images_per_s']:.1f} images/s; "
         f"loader / step = **{loader['ratio']:.0f}x** (target 3x)", ""],
    ]
    for key, what in (("two_processes", "2 processes, all 200,000 images (decoded per step)"),
                      ("two_processes_store", "2 processes, 16,000 images at 112 px (image store in use)")):
        run = x.get(key)
        if not run:
            continue
        ranks = run["ranks"]
        store = next((n for n in run["notes"] if "into memory" in n), "no image store (decoded per step)")
        rows.append([f"{what}: per rank", "; ".join(
            f"rank {i}: data path {_data_path_MiB(rank):.0f} MiB (table, split, store), {rank['rss_at_first_step_MiB']:.0f} "
            f"MiB at the first step, peak {rank['peak_rss_MiB']:.0f} MiB (largest loader worker "
            f"{rank['peak_rss_largest_worker_MiB']:.0f} MiB, shared pages included)" for i, rank in enumerate(ranks))
            + f"; store budget **{ranks[0]['store_budget_MiB']:.0f} MiB per rank**; {store}", f"{run['load_average']:.1f}"])
    arrow = x.get("arrow_1m")
    if arrow:
        made = arrow["generate"]
        rows.append([f"{made['rows']:,}-row Arrow dataset ({made['image_px']} px JPEG bytes, {made['shards']} shards, "
                     f"{made['arrow_MiB']} MiB)", f"written in {made['seconds']:.0f} s", f"{made['load_average']:.1f}"])
        for key, what in (("map_first", "map-style (`--dataset_name`), first run (data check runs)"),
                          ("map_warm", "map-style, check cached"), ("streaming", "`--streaming` (parquet shards)")):
            rank = arrow[key]["ranks"][0]
            checked = rank["stages"].get("data check (cache lookup)", {}).get("s")
            rows.append([f"1M rows, {what}", f"first step at {rank['first_step_s']:.1f} s (imports "
                         f"{rank['imports_s']:.1f} s" + (f", data check {checked:.1f} s" if checked is not None else "")
                         + ")" + (f"; {arrow[key]['notes'][0]}" if key == "streaming" else ""),
                         f"{arrow[key]['load_average']:.1f}"])
    return markdown_table(["what", "measured", "load average"], rows) + source(COMMAND, "scale")


def table_scale_projection(r) -> str:
    from render_docs import markdown_table, source

    p = r.file("scale")["projection"]
    gpu = p["assumed_gpu_step"]
    rows = [
        ["first build of the folder's table (`datasets` imagefolder, once per folder)",
         f"{p['folder_table_first_build_s'] / 60:.0f} min", "cold `folder listing + table load` per file x 1.28M"],
        ["data check, first run (one process per machine; the others wait)", f"{p['data_check_first_s'] / 60:.0f} min",
         "measured images/s of the check"],
        ["data check, cached / `--data_check sample`", f"{p['data_check_cached_s']:.2f} s / {p['data_check_sample_s']:.1f} s",
         "measured, independent of size"],
        ["time to first step, warm caches (each process)", f"{p['first_step_warm_s']:.0f} s, of which "
         f"{p['first_step_warm_per_file_part_s']:.0f} s grow with the file count", "warm stages per file x 1.28M + imports, model"],
        ["images/s one GPU consumes", f"{p['gpu_images_per_s']:,.0f}", f"assumed: {gpu['model']} at {gpu['step_ms']:.0f} "
         f"ms per step ({gpu['source']})"],
        ["decode cores to keep up (ImageNet-sized JPEGs, random-resized-crop 224)",
         f"{p['decode_cores_per_gpu']:.1f} per GPU, {p['decode_cores_for_8_gpus']:.0f} for {p['gpus']} GPUs",
         "measured one-core decode rate"],
        ["image store budget per process", f"{p['store_budget_per_process_MiB']:.0f} MiB (ImageNet does not fit: "
         "decoded per step)", "this machine's budget / 8 processes"],
    ]
    return markdown_table([f"ImageNet-1k ({p['images']:,} images), {p['gpus']} GPUs, one machine", "projected",
                           "from"], rows) + source(COMMAND, "scale")


TABLES = {"scale_first_step": table_scale_first_step, "scale_data": table_scale_data,
          "scale_projection": table_scale_projection}
