"""What a run prints: messages through logging (--log_level, --disable_tqdm), no warning noise on CPU, trackers checked
before anything loads, and each job's help and flags."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_transfer import runtime
from hf_transfer.arguments import finetune_argument_types, parse_args
from hf_transfer.errors import TransferError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def restore_logging():
    level = runtime.library_logger().level
    yield
    runtime.library_logger().setLevel(level)
    runtime._progress_bars["enabled"] = True
    import transformers

    transformers.logging.set_verbosity_warning()


def test_say_goes_through_the_hf_transfer_logger(capsys, restore_logging):
    runtime.say("plan ready")
    assert capsys.readouterr().out == "[hf_transfer] plan ready\n"
    runtime.configure_logging("warning")
    runtime.say("plan ready")
    runtime.say("disk almost full", logging.WARNING)
    assert capsys.readouterr().out == "[hf_transfer] disk almost full\n"
    assert runtime.progress_bars_enabled()
    runtime.configure_logging("error")
    runtime.say("disk almost full", logging.WARNING)
    assert capsys.readouterr().out == ""
    assert not runtime.progress_bars_enabled()  # above warning: bars off unless --disable_tqdm false is given
    runtime.configure_logging("info", disable_tqdm=False, disable_tqdm_given=True)
    assert runtime.progress_bars_enabled()


def test_every_job_takes_log_level_and_disable_tqdm(restore_logging):
    from hf_transfer.jobs.advise import advise_argument_types
    from hf_transfer.jobs.probe import probe_argument_types

    parse_args(probe_argument_types(), ["--log_level", "error"], prog="linear_probe")
    assert runtime.library_logger().level == logging.ERROR and not runtime.progress_bars_enabled()
    parse_args(advise_argument_types(), ["--log_level", "info", "--disable_tqdm", "false"], prog="advise")
    assert runtime.library_logger().level == logging.INFO and runtime.progress_bars_enabled()
    training = parse_args(finetune_argument_types(), ["--log_level", "error"], prog="finetune")[2]
    assert training.disable_tqdm and runtime.library_logger().level == logging.ERROR
    assert not parse_args(finetune_argument_types(), ["--log_level", "error", "--disable_tqdm", "false"])[2].disable_tqdm


def test_report_to_without_its_package_is_one_line_and_exit_2_before_loading(monkeypatch, capsys):
    import hf_transfer.jobs.finetune
    from hf_transfer import training_args
    from hf_transfer.cli import main

    monkeypatch.setattr(training_args, "_installed", lambda package: package not in ("tensorboard", "tensorboardX"))
    monkeypatch.setattr(hf_transfer.jobs.finetune, "run_finetune", lambda *a: pytest.fail("the job started"))
    with pytest.raises(SystemExit) as exited:
        main(["finetune", "--report_to", "tensorboard", "--output_dir", "/nonexistent/never-written"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "hf-transfer finetune: error: --report_to tensorboard needs the tensorboard package, which is not installed: "
        "pip install 'hf-transfer-vision[tensorboard]', or drop --report_to"]
    assert not Path("/nonexistent/never-written").exists()
    monkeypatch.setattr(training_args, "_installed", lambda package: True)
    assert parse_args(finetune_argument_types(), ["--report_to", "tensorboard"])[2].report_to == ["tensorboard"]


def test_pin_memory_is_off_without_an_accelerator():
    training = parse_args(finetune_argument_types(), [])[2]
    assert training.dataloader_pin_memory is runtime.has_accelerator()


# ---- help and flags


def test_help_all_in_every_job_and_each_job_shows_only_what_it_reads(capsys, monkeypatch):
    from hf_transfer.jobs.advise import advise_argument_types
    from hf_transfer.jobs.probe import probe_argument_types

    monkeypatch.setenv("COLUMNS", "100")
    for types, prog, absent in ((probe_argument_types(), "linear_probe", ["--augmentation"]),
                                (advise_argument_types(), "advise", ["--augmentation", "--no_pretrained"])):
        for flag in ("--help", "--help_all"):
            with pytest.raises(SystemExit):
                parse_args(types, [flag], prog=prog)
            text = capsys.readouterr().out
            assert "--train_dir" in text and "--log_level" in text and "--disable_tqdm" in text
            assert not [name for name in absent if re.search(rf"{name}\b", text)], (prog, flag)
    with pytest.raises(SystemExit):
        parse_args(finetune_argument_types(), ["--help"], prog="finetune")
    assert re.search(r"--augmentation\b", capsys.readouterr().out)


def test_a_flag_the_job_does_not_read_is_refused_in_one_line(capsys):
    from hf_transfer.jobs.advise import advise_argument_types
    from hf_transfer.jobs.probe import probe_argument_types

    with pytest.raises(TransferError, match=r"^--augmentation does not apply here: features always go through the "
                                            r"eval transform"):
        parse_args(probe_argument_types(), ["--augmentation", "strong"], prog="linear_probe")
    with pytest.raises(TransferError, match=r"^--no_pretrained does not apply here: .*--strategy scratch"):
        parse_args(advise_argument_types(), ["--no_pretrained"], prog="advise")
    # the field keeps its default, so the job reads what it always did
    assert parse_args(probe_argument_types(), [], prog="linear_probe")[1].augmentation == "auto"


def test_transformers_example_flag_names_are_aliases(tmp_path):
    from hf_transfer.jobs.probe import probe_argument_types

    assert parse_args(finetune_argument_types(), ["--train_val_split", "0.25"])[1].validation_split == 0.25
    assert parse_args(probe_argument_types(), ["--train_val_split=0.2"])[1].validation_split == 0.2
    config = tmp_path / "run.yaml"
    config.write_text("train_val_split: 0.3\n")
    assert parse_args(finetune_argument_types(), [str(config)])[1].validation_split == 0.3


# ---- a whole run, as a user starts it


def _run(*flags, out: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("DS_ACCELERATOR", None)
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "finetune.py"), "--output_dir", str(out),
                           "--max_steps", "1", "--max_train_samples", "20", "--max_eval_samples", "10", *flags],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def _without_bars(stderr: str) -> list[str]:
    lines = re.split(r"[\r\n]", stderr)
    return [line for line in lines if line.strip() and not re.search(r"\d+/\d+ \[|it/s|s/it|^\s*(\x1b\[A)?\s*$", line)
            and line.strip() != "\x1b[A"]


@pytest.mark.slow
def test_default_finetune_prints_no_warning_and_log_level_error_prints_nothing(tmp_path):
    default = _run(out=tmp_path / "default")
    assert default.returncode == 0, default.stderr[-3000:]
    assert "[hf_transfer] engine: one process" in default.stdout
    assert not re.search(r"warn", default.stdout + default.stderr, flags=re.I), default.stdout + default.stderr
    assert _without_bars(default.stderr) == []
    quiet = _run("--log_level", "error", out=tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert (quiet.stdout, _without_bars(quiet.stderr)) == ("", [])
    assert (tmp_path / "quiet" / "all_results.json").is_file()
