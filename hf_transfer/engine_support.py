"""The engine x transfer-plan feature table, written down once: `engines.check_engine` refuses what it marks
unsupported before anything loads, and `support_table()` / `refusal_table()` render it for docs/scale.md.

Each supported pair names the evidence that it works (a test, or the GPU check that will run it).
"""

from __future__ import annotations

from dataclasses import dataclass

# --------------------------------------------------------------------------------------------- the support table
FEATURES = {
    "freeze": "frozen layers (`--freeze`, `--strategy linear_probe` / `partial`)",
    "unfreeze": "gradual unfreezing, LP-FT (the trainable set grows during the run)",
    "bn_policy": "BatchNorm policy (`--bn_policy frozen` / `eval`)",
    "layer_rates": "layer-wise rates (backbone multiplier, `--layer_decay`, `--lr_multipliers`, no decay on norms)",
    "lora": "LoRA (`--strategy lora`: peft adapters + the head, saved as adapter and merged model)",
}

ENGINES = {
    "single": "one process (CPU, or one GPU, fp32 / bf16 / fp16)",
    "ddp": "DDP (several processes: CPU, GPUs, nodes)",
    "zero1_2": "DeepSpeed ZeRO-1 / ZeRO-2",
    "zero3": "DeepSpeed ZeRO-3",
    "fsdp1": "FSDP v1 (`use_orig_params: true`)",
    "fsdp2": "FSDP v2 (`fully_shard`)",
}

PLAN_TESTS = "tests/test_plan.py::"
DDP_TEST = "tests/test_multiprocess.py::test_two_process_finetune_recipe"
FSDP_TEST = "tests/test_engines.py::test_plan_through_torch_fsdp (torch FSDP on CPU, one process)"
ZERO_TEST = ("tests/test_engines.py::test_zero_filled_gradients_leave_pending_groups_untouched "
             "(ZeRO's zero gradients emulated)")
DEEPSPEED_CONFIG_TEST = "tests/test_engines.py::test_deepspeed_config_checks (the config checks; the run: bench/gpu_check.sh)"
DEEPSPEED_CPU_RUN = ("tests/test_scale.py::test_deepspeed_bf16_trains_batchnorm_and_saves_the_float32_masters (real "
                     "DeepSpeed ZeRO-2, bf16, one CPU process; GPUs: bench/gpu_check.sh)")
FSDP2_CPU_RUN = "tests/test_scale.py::test_shipped_fsdp2_config_trains_on_two_cpu_processes (recipes/accelerate/fsdp2.yaml)"
NO_DEEPSPEED = "not run here (no GPU, no deepspeed): bench/gpu_check.sh checks it"
LORA_SHARDED = ("a LoRA run is saved (adapter + merged model) from the whole peft model in one process, not yet through "
                "DeepSpeed's or FSDP's sharded or 16-bit weights; use DDP (recipes/accelerate/multi_gpu.yaml): LoRA "
                "trains few weights and rarely needs sharding")


@dataclass(frozen=True)
class Support:
    """How one engine handles one plan feature: ``works`` (how, and the test or 'not run') or ``refused`` (the line)."""

    works: bool
    how: str
    evidence: str = ""  # the test that shows it, or why it has not run


SUPPORT: dict[tuple[str, str], Support] = {
    ("single", "freeze"): Support(True, "requires_grad=False, not in the optimizer",
                                  PLAN_TESTS + "test_exact_trainable_set_for_each_freeze_rule"),
    ("single", "unfreeze"): Support(True, "requires_grad per phase; fixed optimizer groups",
                                    PLAN_TESTS + "test_resume_in_the_middle_of_gradual_unfreezing"),
    ("single", "bn_policy"): Support(True, "forward pre-hook keeps chosen BatchNorm in eval",
                                     PLAN_TESTS + "test_frozen_batchnorm_statistics_are_bit_identical"),
    ("single", "layer_rates"): Support(True, "the plan's parameter groups", PLAN_TESTS + "test_group_lrs_follow_the_formula"),
    ("ddp", "freeze"): Support(True, "frozen before DDP wraps the model", DDP_TEST),
    ("ddp", "unfreeze"): Support(True, "everything that ever trains is in DDP; phases applied after wrapping", DDP_TEST),
    ("ddp", "bn_policy"): Support(True, "as one process; buffers end as rank 0's", DDP_TEST),
    ("ddp", "layer_rates"): Support(True, "the plan's parameter groups", DDP_TEST),
    ("zero1_2", "freeze"): Support(True, "frozen before `deepspeed.initialize`: outside the ZeRO optimizer", DEEPSPEED_CPU_RUN),
    ("zero1_2", "unfreeze"): Support(True, "ZeRO fills missing gradients with zeros: a pending group's weight decay is held "
                                           "at 0 until its epoch, then its optimizer state starts afresh", ZERO_TEST),
    ("zero1_2", "bn_policy"): Support(True, "forward pre-hook, as one process; BatchNorm computed in float32 under "
                                            "bf16 / fp16 (16-bit weights beside float32 statistics fail)", DEEPSPEED_CPU_RUN),
    ("zero1_2", "layer_rates"): Support(True, "the plan's groups go to DeepSpeed as a client optimizer (no `optimizer` / "
                                              "`scheduler` section allowed)", DEEPSPEED_CONFIG_TEST),
    ("zero3", "freeze"): Support(True, "frozen before `deepspeed.initialize`", NO_DEEPSPEED),
    ("zero3", "unfreeze"): Support(False, "ZeRO-3 partitions the trainable parameters once, when it starts, and cannot "
                                          "add the ones that unfreeze later; use recipes/accelerate/deepspeed_zero2.yaml or "
                                          "multi_gpu.yaml, or a fixed --freeze"),
    ("zero3", "bn_policy"): Support(True, "forward pre-hook; BatchNorm buffers are not partitioned", NO_DEEPSPEED),
    ("zero3", "layer_rates"): Support(True, "as ZeRO-1/2", DEEPSPEED_CONFIG_TEST),
    ("fsdp1", "freeze"): Support(True, "per original parameter (`use_orig_params`); wrapper prefixes stripped", FSDP_TEST),
    ("fsdp1", "unfreeze"): Support(True, "FSDP drops the gradient of an original parameter with requires_grad=False",
                                   FSDP_TEST),
    ("fsdp1", "bn_policy"): Support(True, "forward pre-hook on the wrapped model", FSDP_TEST),
    ("fsdp1", "layer_rates"): Support(True, "groups over the original parameters", FSDP_TEST),
    ("fsdp2", "freeze"): Support(True, "per parameter (DTensor shards keep their names)", FSDP2_CPU_RUN),
    ("fsdp2", "unfreeze"): Support(True, "fully_shard copies requires_grad to the gathered parameter at every unshard",
                                   FSDP_TEST),
    ("fsdp2", "bn_policy"): Support(True, "forward pre-hook", FSDP_TEST),
    ("fsdp2", "layer_rates"): Support(True, "groups over the sharded parameters", FSDP_TEST),
    ("single", "lora"): Support(True, "peft wraps the model before the plan is built; saved from the peft model",
                                "tests/test_lora.py::test_lora_job_writes_adapter_and_merged_model"),
    ("ddp", "lora"): Support(True, "the peft model is what DDP wraps; rank 0 saves the unwrapped one",
                             "run by hand: 2 CPU processes, tests/multiprocess_recipe.py --strategy lora (README, LoRA)"),
    ("zero1_2", "lora"): Support(False, LORA_SHARDED),
    ("zero3", "lora"): Support(False, LORA_SHARDED),
    ("fsdp1", "lora"): Support(False, LORA_SHARDED),
    ("fsdp2", "lora"): Support(False, LORA_SHARDED),
}

# Settings refused whatever the plan, with the line each gets (checked in `check_engine`; listed in docs/scale.md).
SETTING_REFUSALS = {
    "deepspeed_optimizer": "the DeepSpeed config has an 'optimizer' section: DeepSpeed would build its own optimizer over "
                           "all parameters and drop the transfer plan's frozen layers and per-layer learning rates; "
                           "delete the section (hf_transfer builds the optimizer from the plan: choose it with --optim)",
    "deepspeed_scheduler": "the DeepSpeed config has a 'scheduler' section: DeepSpeed's schedulers give every parameter "
                           "group one learning rate, flattening the plan's per-layer rates; delete the section and "
                           "choose the schedule with --lr_scheduler_type",
    "zero3_init": "DeepSpeed ZeRO-3 with zero3_init_flag (or --deepspeed with a stage-3 config, which turns it on) "
                  "loads the model already partitioned, but the transfer plan needs whole weights to re-initialize, "
                  "resize and count them; launch with recipes/accelerate/deepspeed_zero3.yaml (zero3_init_flag: false)",
    "zero3_gather": "DeepSpeed ZeRO-3 without stage3_gather_16bit_weights_on_model_save cannot gather the trained "
                    "weights into the output folder; set zero3_save_16bit_model: true (as "
                    "recipes/accelerate/deepspeed_zero3.yaml does)",
    "zero_unused": "DeepSpeed with ignore_unused_parameters: false stops at the first step, because parameters that "
                   "have not unfrozen yet get no gradient; remove that setting (its default, true, is what gradual "
                   "unfreezing needs)",
    "fsdp1_flat": "FSDP v1 without use_orig_params flattens each wrapped module's parameters into one tensor, which "
                  "the plan's per-layer freezing and learning rates cannot reach; set fsdp_use_orig_params: true, or "
                  "use FSDP v2 (recipes/accelerate/fsdp2.yaml)",
    "fsdp_ram_efficient": "fsdp_cpu_ram_efficient_loading loads the weights on the first process only, but every "
                          "process builds the transfer plan (re-init, input size) from whole weights; set it to false",
    "data_parallel": "several GPUs visible to one process: Trainer would wrap the model in torch.nn.DataParallel, whose "
                     "per-step replicas run frozen BatchNorm with batch statistics; launch one process per GPU with "
                     "`accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/finetune.py`, or "
                     "pick one GPU with CUDA_VISIBLE_DEVICES=0",
    "precision_conflict": "the launcher's mixed precision and --bf16 / --fp16 disagree (DeepSpeed would stop after "
                          "loading everything); drop the flag: the accelerate config's mixed_precision decides",
}


# ------------------------------------------------------------------------------------------- for docs/scale.md
def support_table() -> str:
    """The engine x feature table (markdown), rendered from `SUPPORT`."""
    rows = ["| engine | " + " | ".join(FEATURES[f].split(" (")[0] for f in FEATURES) + " |",
            "|---" * (len(FEATURES) + 1) + "|"]
    for key, name in ENGINES.items():
        cells = []
        for feature in FEATURES:
            support = SUPPORT[(key, feature)]
            if support.works:
                test, _, note = support.evidence.partition(" (")
                evidence = f"`{test}`" + (f" ({note}" if note else "") if test.startswith("tests/") else support.evidence
                cells.append(f"works: {support.how}; {evidence}")
            else:
                cells.append(f"**refused**: `{support.how.split(';')[0]}`")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def refusal_table() -> str:
    """The engine settings refused whatever the plan (markdown)."""
    rows = ["| setting | refused with |", "|---|---|"]
    rows += [f"| `{key}` | {line} |" for key, line in SETTING_REFUSALS.items()]
    return "\n".join(rows)
