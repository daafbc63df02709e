import subprocess
import sys

from hf_transfer.cli import main


def test_list_shows_embedded_assets(capsys):
    main(["list"])
    out = capsys.readouterr().out
    assert "embedded:efficientnet_lite0" in out and "embedded:mnist" in out


def test_unknown_command_is_a_one_line_error():
    result = subprocess.run([sys.executable, "-m", "hf_transfer.cli", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["hf-transfer: error: unknown command 'frobnicate'; pick one of the commands above"]


def run_cli(args, capsys):
    """In this process: the real command line is tested once, above; the subcommands share its error path."""
    import pytest

    with pytest.raises(SystemExit) as exited:
        main(args)
    return exited.value.code, capsys.readouterr().err


def test_finetune_subcommand_reports_bad_input(tmp_path, capsys):
    code, err = run_cli(["finetune", "--train_dir", str(tmp_path / "nope")], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("hf-transfer finetune: error: image folder")


def test_probe_subcommand_reports_bad_input(capsys):
    code, err = run_cli(["probe", "--probe", "telepathy"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("hf-transfer probe: error:")


def test_only_a_command_line_run_skips_the_exit_garbage_collection():
    """`hf-transfer` freezes the heap before exiting (~1 s less shutdown); an in-process call must not."""
    import gc

    before = gc.get_freeze_count()
    main(["list"])
    assert gc.get_freeze_count() == before  # a notebook or test calling main() keeps a normal heap
    script = ("import gc, sys\nfrom hf_transfer.cli import main\nsys.argv = ['hf-transfer', 'list']\nmain()\n"
              "print('frozen', gc.get_freeze_count())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split("frozen")[-1]) > 0
