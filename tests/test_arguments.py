"""Argument parsing of the recipes and the CLI: every bad input is one line (exit code 2), --help is grouped."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hf_transfer.arguments import finetune_argument_types, parse_args
from hf_transfer.errors import TransferError
from hf_transfer.jobs.probe import probe_argument_types

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finetune_types():
    return finetune_argument_types()


def error_of(types, *args) -> str:
    with pytest.raises(TransferError) as caught:
        parse_args(types, list(map(str, args)), prog="finetune")
    message = str(caught.value)
    assert "\n" not in message
    return message


def config(tmp_path, text, name="my_run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- unknown and abbreviated flags, unknown keys

def test_unknown_flag_suggests_the_close_one(finetune_types):
    assert error_of(finetune_types, "--learnig_rate", "0.1") == "unknown option --learnig_rate (did you mean --learning_rate?)"


def test_several_unknown_flags_are_named_in_one_line(finetune_types):
    message = error_of(finetune_types, "--learnig_rate", "0.1", "--frobnicate", "3")
    assert message.startswith("unknown options --learnig_rate (did you mean --learning_rate?), --frobnicate")
    assert message.endswith("; --help lists the flags")


def test_names_from_other_trainers_get_ours():
    assert error_of(finetune_argument_types(), "--epochs", "3") == "unknown option --epochs (did you mean --num_train_epochs?)"
    assert error_of(finetune_argument_types(), "--lr", "3") == "unknown option --lr (did you mean --learning_rate?)"


def test_prefix_abbreviation_is_refused(finetune_types):
    """argparse's allow_abbrev would take --learning_rat as --learning_rate, silently."""
    for args in (["--learning_rat", "0.1"], ["--learning_rat=0.1"]):
        assert error_of(finetune_types, *args) == "unknown option --learning_rat (did you mean --learning_rate?)"


def test_stray_argument_and_a_late_config_file(finetune_types):
    assert error_of(finetune_types, "foo").startswith("unexpected argument 'foo' (flags start with --")
    assert error_of(finetune_types, "--seed", "1", "run.yaml") == "unexpected argument 'run.yaml' (a config file must come first)"


def test_unknown_yaml_key_suggests_the_close_one(finetune_types, tmp_path):
    path = config(tmp_path, "learnig_rate: 0.1\n")
    assert error_of(finetune_types, path) == f"unknown key 'learnig_rate' in {path} (did you mean learning_rate?)"


def test_nested_section_and_several_unknown_keys(finetune_types, tmp_path):
    path = config(tmp_path, "model:\n  model_name_or_path: x\nfrobnicate: 1\n")
    assert error_of(finetune_types, path) == (
        f"unknown keys in {path}: 'model' (a section: put its keys at the top level), 'frobnicate'")


# ---- config files

def test_missing_config_file(finetune_types, tmp_path):
    path = tmp_path / "nope.yaml"
    assert error_of(finetune_types, path) == f"config file {path} does not exist; check the path (it must come first)"


def test_yaml_syntax_error_names_the_line(finetune_types, tmp_path):
    path = config(tmp_path, "seed: 1\n dataset_name: : x\n")
    assert error_of(finetune_types, path) == f"{path} line 2: invalid YAML (mapping values are not allowed here); fix the syntax"


def test_json_syntax_error_names_the_line(finetune_types, tmp_path):
    path = config(tmp_path, '{"seed": 1,\n}', name="run.json")
    assert error_of(finetune_types, path).startswith(f"{path} line 2: invalid JSON (")


def test_config_top_level_must_be_a_mapping(finetune_types, tmp_path):
    path = config(tmp_path, "- seed\n- 1\n")
    assert error_of(finetune_types, path) == (
        f"{path} must be a mapping of flag names to values (e.g. learning_rate: 0.001), not a list")


def test_list_or_mapping_for_a_scalar_key(finetune_types, tmp_path):
    path = config(tmp_path, "learning_rate: [0.1, 0.2]\n")
    assert error_of(finetune_types, path) == f"learning_rate in {path}: expected a number, got the list [0.1, 0.2]"
    path = config(tmp_path, "num_train_epochs: {value: 3}\n")
    assert error_of(finetune_types, path) == f"num_train_epochs in {path}: expected a number, got the mapping {{'value': 3}}"


@pytest.mark.parametrize("line, message", [
    ("learning_rate: fast", "learning_rate in {path}: invalid float value 'fast'"),
    ("num_train_epochs: abc", "num_train_epochs in {path}: invalid float value 'abc'"),
    ("per_device_train_batch_size: x", "per_device_train_batch_size in {path}: invalid int value 'x'"),
])
def test_wrong_type_in_a_config_file(finetune_types, tmp_path, line, message):
    path = config(tmp_path, line + "\n")
    assert error_of(finetune_types, path) == message.format(path=path)


def test_config_values_that_must_keep_working(finetune_types, tmp_path):
    path = config(tmp_path, "no_pretrained: true\nimage_size: null\nreport_to: [none]\nsave_strategy: no\n"
                            "no_dataloader_pin_memory: true\nlr_scheduler_kwargs: {min_lr: 0.0}\nlearning_rate: 0.5\n")
    model, _, training, _ = parse_args(finetune_types, [str(path), "--learning_rate", "0.2"])
    assert model.no_pretrained is True and model.image_size is None
    assert training.report_to == [] and training.save_strategy == "no" and training.dataloader_pin_memory is False
    assert training.lr_scheduler_kwargs == {"min_lr": 0.0}
    assert training.learning_rate == 0.2  # a flag after the file overrides it


# ---- wrong values on the command line

@pytest.mark.parametrize("args, message", [
    (["--learning_rate", "abc"], "--learning_rate: invalid float value 'abc'"),
    (["--per_device_train_batch_size", "x"], "--per_device_train_batch_size: invalid int value 'x'"),
    (["--learning_rate"], "--learning_rate: expected one argument"),
    (["--optim", "adamw_fancy"], "--optim: invalid choice 'adamw_fancy' (choose from 'adamw_torch',"),
])
def test_wrong_type_or_choice_on_the_command_line(finetune_types, args, message):
    assert error_of(finetune_types, *args).startswith(message)


def test_training_arguments_checks_become_one_line(finetune_types):
    assert error_of(finetune_types, "--eval_strategy", "sometimes").startswith(
        "--eval_strategy: sometimes is not a valid IntervalStrategy, please select one of ['no', 'steps', 'epoch']")
    assert error_of(finetune_types, "--load_best_model_at_end").startswith(
        "--load_best_model_at_end requires the save and eval strategy to match")


@dataclass
class Fragile:
    value: int = 0

    def __post_init__(self):
        if self.value == 1:
            raise ValueError("value 1 is not allowed.\nMore detail.")
        if self.value == 2:
            raise RuntimeError("a bug, not bad input")


def test_value_errors_become_one_line_and_other_errors_pass_through():
    with pytest.raises(TransferError, match=r"^value 1 is not allowed\.$"):
        parse_args((Fragile,), ["--value", "1"])
    with pytest.raises(RuntimeError, match="a bug"):
        parse_args((Fragile,), ["--value", "2"])


# ---- step intervals imply their strategy

def test_save_steps_implies_save_strategy_steps(finetune_types, tmp_path):
    assert parse_args(finetune_types, ["--save_steps", "2"])[2].save_strategy == "steps"
    assert parse_args(finetune_types, ["--save_strategy", "epoch", "--save_steps", "2"])[2].save_strategy == "epoch"
    assert parse_args(finetune_types, [str(config(tmp_path, "save_steps: 2\n"))])[2].save_strategy == "steps"
    assert parse_args(finetune_types, [])[2].save_strategy == "no"


def test_eval_steps_implies_eval_strategy_steps(finetune_types):
    assert parse_args(finetune_types, ["--eval_steps", "5"])[2].eval_strategy == "steps"
    assert parse_args(finetune_types, ["--eval_strategy", "no", "--eval_steps", "5"])[2].eval_strategy == "no"


# ---- help

def help_text(types, flag, capsys, monkeypatch, prog="finetune") -> str:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exited:
        parse_args(types, [flag], prog=prog)
    assert exited.value.code in (0, None)
    return capsys.readouterr().out


def test_help_is_grouped_and_short(finetune_types, capsys, monkeypatch):
    text = help_text(finetune_types, "--help", capsys, monkeypatch)
    lines = text.splitlines()
    assert lines[0] == "usage: finetune [config.yaml] [flags]"
    titles = [line for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["model:", "data:", "transfer:", "training (common):"]
    assert lines[-1] == "all other TrainingArguments flags: --help_all"
    assert "--learning_rate FLOAT" in text and "--save_steps" in text and "--report_to" in text
    assert "--adam_beta1" not in text and "--learning-rate" not in text
    assert len(lines) < 140  # readable in one screenful or two


def test_help_all_lists_every_flag(finetune_types, capsys, monkeypatch):
    text = help_text(finetune_types, "--help_all", capsys, monkeypatch)
    assert "--adam_beta1 FLOAT" in text and "training (all other TrainingArguments flags):" in text
    assert text.index("training (common):") < text.index("--adam_beta1")


def test_probe_help_groups(capsys, monkeypatch):
    text = help_text(probe_argument_types(), "--help", capsys, monkeypatch, prog="linear_probe")
    titles = [line for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert text.startswith("usage: linear_probe [config.yaml] [flags]")
    assert titles == ["model:", "data:", "probe:", "logging:"] and "--help_all" not in text


def test_cli_help_names_the_command(capsys, monkeypatch):
    from hf_transfer.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exited:
        main(["finetune", "--help"])
    assert exited.value.code in (0, None)
    assert capsys.readouterr().out.startswith("usage: hf-transfer finetune [config.yaml] [flags]")


# ---- the real command: exit code 2, one stderr line, no traceback

@pytest.mark.parametrize("make_args, expected", [
    (lambda tmp: ["--learning_rat", "0.1"], "finetune: error: unknown option --learning_rat (did you mean --learning_rate?)"),
    (lambda tmp: [config(tmp, "seed: [1\n"), "--seed", "2"], "finetune: error: {tmp}/my_run.yaml line 2: invalid YAML ("),
])
def test_recipe_stops_with_one_line(tmp_path, make_args, expected):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune.py"), *map(str, make_args(tmp_path))],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected.format(tmp=tmp_path)), result.stderr
    assert "Traceback" not in result.stderr
