"""Hub round trip: a fine-tuned folder is a complete Hub artifact (HF run files, a card read from the folder), loads
without hf_transfer (pipeline, Auto classes, timm), and push checks it before uploading (dry run, fake HfApi)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_transfer import TransferError
from hf_transfer.hub import push_folder
from conftest import run_recipe_in_process, run_without_hf_transfer

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["--dataset_name", "embedded:digits", "--image_size", "32", "--max_train_samples", "64",
            "--max_eval_samples", "32", "--num_train_epochs", "1", "--logging_steps", "1"]


def _env(**extra):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """One tiny fine-tune, shared by every test here. It asks for --push_to_hub offline: the run warns at start,
    trains, writes the complete folder, then the push fails with one line (exit 2) and the folder stays."""
    out = tmp_path_factory.mktemp("hub") / "run"
    result = run_recipe_in_process("finetune.py", *TINY_RUN, "--output_dir", out, "--push_to_hub", "--hub_model_id",
                                   "me/digits-lite0")
    return out, result


def test_push_to_hub_offline_warns_trains_then_fails_in_one_line(finetuned):
    out, result = finetuned
    assert "warning: --push_to_hub me/digits-lite0: HF_HUB_OFFLINE is set" in result.stdout
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("finetune: error: cannot push to the Hub: HF_HUB_OFFLINE is set") and str(out) in last
    assert (out / "all_results.json").is_file() and (out / "README.md").is_file()  # the finished folder is kept


def test_folder_has_the_files_hf_examples_leave(finetuned):
    out, _ = finetuned
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "transfer_plan.json", "all_results.json", "train_results.json",
            "eval_results.json", "trainer_state.json", "training_args.json", "training_curves.png",
            "confusion_matrix.png", "README.md"} <= names
    assert "training_args.bin" not in names and not any(n.startswith(".") for n in names)
    everything = json.loads((out / "all_results.json").read_text())
    for split in ("train", "eval"):
        part = json.loads((out / f"{split}_results.json").read_text())
        assert all(everything[k] == v for k, v in part.items() if k != "epoch"), split
        assert part["epoch"] == 1.0 and f"{split}_samples" in part
    assert everything["train_samples"] == 64 and everything["eval_samples"] == 32
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("loss" in e for e in history) and any("eval_accuracy" in e for e in history)
    args = json.loads((out / "training_args.json").read_text())
    assert args["push_to_hub"] is False and args["hub_model_id"] == "me/digits-lite0"  # Trainer never pushed itself


def _card_plan_rows(text):
    """(first depth, last depth, tensors, lr, weight decay, when) per row of the card's folded plan table."""
    rows = re.findall(r"^\| (\d+)(?:-(\d+))? \| [^|]+ \| (\d+) \| (\S+) \| (\S+) \| (.+) \|$", text, flags=re.M)
    return [(int(a), int(b or a), int(n), float(lr), float(wd), when) for a, b, n, lr, wd, when in rows]


def test_card_metadata_parses_and_its_numbers_are_the_folders(finetuned):
    from huggingface_hub import ModelCard

    out, _ = finetuned
    card = ModelCard.load(out / "README.md")
    data = card.data
    results = json.loads((out / "all_results.json").read_text())
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert {"hf_transfer", "image-classification", "transfer-learning", "full", "timm"} <= set(data.tags)
    assert data.base_model is None  # embedded weights have no Hub id: said in the text instead
    assert "not on the Hub" in card.text and data.license == "apache-2.0"
    metrics = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert metrics == {("validation", "accuracy"): results["eval_accuracy"], ("validation", "f1"): results["eval_macro_f1"]}
    plan = json.loads((out / "transfer_plan.json").read_text())
    # folded: consecutive depth groups with one rate and schedule share a row; every group is in exactly one row
    rows = _card_plan_rows(card.text)
    assert rows[0][0] == 0 and all(a[1] + 1 == b[0] for a, b in zip(rows, rows[1:]))  # depths in order, no gap
    for first, last, tensors, lr, wd, when in rows:
        groups = [g for g in plan["groups"] if first <= g["depth"] <= last]
        assert tensors == sum(len(g["params"]) for g in groups)
        assert [g["lr"] for g in groups] == pytest.approx([lr] * len(groups), rel=1e-5)
        assert {"frozen" if g["frozen"] else f"from epoch {g['trains_from_epoch']}" for g in groups} == {when}
        assert max(g["weight_decay"] for g in groups) == pytest.approx(wd, rel=1e-5)
    assert len(rows) == 1 + sum(1 for a, b in zip(plan["groups"], plan["groups"][1:])
                                if (a["lr"], a["trains_from_epoch"], a["frozen"]) != (b["lr"], b["trains_from_epoch"], b["frozen"]))
    assert rows[-1][0] == plan["groups"][-1]["depth"] and len(rows) < len(plan["groups"])
    assert "## Training hyperparameters" in card.text and "- learning_rate (the head's): " in card.text
    history = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "eval_loss" in h]
    assert f"| {history[-1]['epoch']:g} | {history[-1]['step']} | {history[-1]['eval_loss']:.4f} |" in card.text
    assert "## Framework versions" in card.text and "- transformers " in card.text
    assert f"BatchNorm policy `{plan['config']['bn_policy']}`" in card.text
    assert "Trained on 64 images at 32 px for 1 epoch(s)" in card.text
    assert 'pipeline("image-classification", model="me/digits-lite0")' in card.text
    assert 'timm.create_model("hf-hub:me/digits-lite0", pretrained=True)' in card.text


def test_timm_loads_the_folder_with_identical_logits(finetuned):
    import timm
    from transformers import AutoModelForImageClassification

    out, _ = finetuned
    hf_model = AutoModelForImageClassification.from_pretrained(out).eval()
    timm_model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert timm_model.pretrained_cfg["label_names"] == [str(i) for i in range(10)]
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(timm_model(pixels), hf_model(pixel_values=pixels).logits, atol=1e-5, rtol=0)


def test_folder_continues_training_the_way_run_image_classification_loads_it(finetuned):
    """run_image_classification.py: AutoConfig with new labels, the model with ignore_mismatched_sizes, the processor."""
    from PIL import Image
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    out, _ = finetuned
    labels = ["cat", "dog", "bird"]
    config = AutoConfig.from_pretrained(out, num_labels=len(labels), label2id={l: i for i, l in enumerate(labels)},
                                        id2label=dict(enumerate(labels)), finetuning_task="image-classification")
    model = AutoModelForImageClassification.from_pretrained(out, config=config, ignore_mismatched_sizes=True).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    inputs = processor(Image.new("RGB", (40, 40)), return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (32, 32)  # the resolution it was fine-tuned at
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 3)
    assert model.config.id2label == dict(enumerate(labels))
    # Same labels: nothing is re-initialized, the body and head are the fine-tuned ones.
    same = AutoModelForImageClassification.from_pretrained(out).eval()
    body = {k: v for k, v in same.state_dict().items() if "classifier" not in k}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in body.items())


NO_HF_TRANSFER_SCRIPT = """
import json, sys
from PIL import Image
from transformers import pipeline
folder, images = sys.argv[1], json.loads(sys.argv[2])
classify = pipeline("image-classification", model=folder)
print(json.dumps([classify(Image.open(path))[0]["label"] for path in images]))
"""


def test_pipeline_without_hf_transfer_predicts_what_the_run_measured(finetuned, tmp_path):
    """The validation images through pipeline() in a process where hf_transfer cannot be imported: same accuracy as
    the run's eval_accuracy, and the same labels as hf_transfer's own eval transform + model in this process."""
    from hf_transfer.arguments import DataArguments
    from hf_transfer.backbones import data_config, load_backbone
    from hf_transfer.transforms import build_transform

    out, _ = finetuned
    data = DataArguments(dataset_name="embedded:digits", max_train_samples=64, max_eval_samples=32).load(42)
    validation = data.splits["validation"]
    paths, truth = [], []
    for i, row in enumerate(validation):
        paths.append(str(tmp_path / f"{i}.png"))
        row[data.image_column].save(paths[-1])  # PNG: the same pixels the run saw
        truth.append(data.labels[row[data.label_column]])
    predicted = run_without_hf_transfer(NO_HF_TRANSFER_SCRIPT, str(out), json.dumps(paths), tmp_path=tmp_path)

    # The tiny run is near chance, so some logits are near ties that batch size and thread count can flip (one
    # image moved 0.1875 -> 0.21875 on a loaded machine): a preprocessing mismatch would move many, with margins.
    accuracy = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    run_accuracy = json.loads((out / "all_results.json").read_text())["eval_accuracy"]
    assert abs(accuracy - run_accuracy) <= 1 / len(truth) + 1e-9, (accuracy, run_accuracy)
    model = load_backbone(str(out)).eval()
    transform = build_transform(data_config(model), image_size=32)
    from PIL import Image

    pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    ours = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    top2 = logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-3).tolist()  # not a near tie
    assert sum(clear) >= len(clear) // 2, "too few clear predictions to compare"
    assert [p for p, c in zip(predicted, clear) if c] == [o for o, c in zip(ours, clear) if c]


# ------------------------------------------------------------------------------------------------------- pushing
class RecordingApi:
    """A stand-in for HfApi that records what a push asks for and which files upload_folder would send."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects
        from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

        root = Path(folder_path)
        every = sorted(p.relative_to(root).as_posix() for p in root.glob("**/*") if p.is_file())
        sent = list(filter_repo_objects(every, ignore_patterns=list(ignore_patterns or []) + DEFAULT_IGNORE_PATTERNS))
        self.calls.append(("upload_folder", repo_id, {**kwargs, "files": sent}))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()


@pytest.fixture
def pushable(finetuned, tmp_path):
    """A copy of the run with what must never be uploaded by default: a checkpoint, a staging folder, a hidden file."""
    out, _ = finetuned
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "checkpoint-2").mkdir()
    (copy / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (copy / ".staging-abc").mkdir()
    (copy / ".staging-abc" / "model.safetensors").write_text("half-written")
    (copy / ".all_results.json.123.tmp").write_text("{}")
    return copy


def test_dry_run_lists_exactly_the_files_and_passes_its_checks(pushable):
    result = run_recipe_in_process("push_scripts/push_to_hub.py", pushable, "--repo_id", "me/model", "--dry_run")
    assert result.returncode == 0, result.stderr[-3000:]
    listed = re.findall(r"^\s+[\d.]+ [KMG]?B  (\S+)$", result.stdout, flags=re.M)
    expected = sorted(p.name for p in pushable.iterdir() if p.is_file() and not p.name.startswith("."))
    assert sorted(listed) == expected
    assert "checks passed" in result.stdout and f"total, {len(expected)} files" in result.stdout


def test_push_uploads_through_hfapi_with_privacy_revision_and_exactly_the_files(pushable, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    api = RecordingApi()
    result = push_folder(pushable, "me/model", private=True, revision="v1", commit_message="first", token="hf_secret",
                         api=api)
    dry = push_folder(pushable, "me/model", dry_run=True)
    (create, repo, create_kwargs), (branch, _, branch_kwargs), (upload, _, upload_kwargs) = api.calls
    assert (create, repo, create_kwargs["private"], create_kwargs["exist_ok"]) == ("create_repo", "me/model", True, True)
    assert (branch, branch_kwargs["branch"]) == ("create_branch", "v1")
    assert upload == "upload_folder" and upload_kwargs["revision"] == "v1" and upload_kwargs["commit_message"] == "first"
    assert upload_kwargs["files"] == [name for name, _ in result.files] == [name for name, _ in dry.files]
    assert "README.md" in upload_kwargs["files"] and not any(f.startswith(("checkpoint-", ".")) for f in upload_kwargs["files"])
    assert result.url.endswith("/commit/abc")
    assert "hf_secret" not in capsys.readouterr().out

    with_checkpoints = RecordingApi()
    push_folder(pushable, "me/model", include_checkpoints=True, api=with_checkpoints)
    assert [c[0] for c in with_checkpoints.calls] == ["create_repo", "upload_folder"]  # main: no branch to create
    assert "checkpoint-2/trainer_state.json" in with_checkpoints.calls[-1][2]["files"]


def test_push_writes_a_missing_card_and_refuses_unfinished_or_unloadable_folders(pushable):
    (pushable / "README.md").unlink()
    result = push_folder(pushable, "me/model", dry_run=True)
    assert (pushable / "README.md").is_file() and any("model card" in note for note in result.notes)

    (pushable / "all_results.json").unlink()
    with pytest.raises(TransferError, match="has no all_results.json: the run did not finish") as info:
        push_folder(pushable, "me/model", dry_run=True)
    assert "\n" not in str(info.value)
    (pushable / "all_results.json").write_text("{}")
    config = json.loads((pushable / "config.json").read_text())
    config.pop("pretrained_cfg")
    (pushable / "config.json").write_text(json.dumps(config))
    with pytest.raises(TransferError, match="no loadable preprocessing"):
        push_folder(pushable, "me/model", dry_run=True)
    with pytest.raises(TransferError, match="not a Hub repository id|no namespace"):
        push_folder(pushable, "model-without-owner", dry_run=True)


def test_push_offline_or_without_token_is_one_line(pushable, tmp_path):
    script = [sys.executable, str(ROOT / "push_scripts" / "push_to_hub.py"), str(pushable), "--repo_id", "me/model"]
    offline = run_recipe_in_process("push_scripts/push_to_hub.py", *script[2:])
    # huggingface_hub reads HF_HUB_OFFLINE when it is imported: going online takes a process of its own.
    no_token = subprocess.run(script, capture_output=True, text=True, timeout=600,
                              env=_env(HF_HUB_OFFLINE="0", HF_TOKEN="", HF_HOME=str(tmp_path / "no-login")))
    for result, reason in ((offline, "HF_HUB_OFFLINE is set"), (no_token, "no Hugging Face token")):
        assert result.returncode == 2 and "Traceback" not in result.stderr
        last = [line for line in result.stderr.splitlines() if line.strip()][-1]
        assert last.startswith("push_to_hub: error: cannot push to the Hub") and reason in last, last


def test_one_checkpoint_pushes_with_a_card_from_its_trainer_state(finetuned, tmp_path):
    from huggingface_hub import ModelCard

    out, _ = finetuned
    checkpoint = tmp_path / "run" / "checkpoint-2"
    shutil.copytree(out, checkpoint, ignore=shutil.ignore_patterns("all_results.json", "README.md", "*_results.json"))
    result = push_folder(checkpoint, "me/model", dry_run=True, include_checkpoints=True)
    assert "README.md" in [name for name, _ in result.files]
    card = ModelCard.load(checkpoint / "README.md")
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    last_eval = [e for e in history if "eval_accuracy" in e][-1]
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["accuracy"] == last_eval["eval_accuracy"]
    assert "intermediate checkpoint (step 2)" in card.text


def test_what_a_push_uploads_names_no_local_path(pushable, tmp_path_factory):
    from hf_transfer.hub.push import check_reload

    result = push_folder(pushable, "me/model", dry_run=True, keep_staged=True)
    staged = result.staged
    try:
        uploaded = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        assert uploaded == sorted(name for name, _ in result.files)  # the dry run lists exactly what is staged
        local = [str(tmp_path_factory.getbasetemp()), str(pushable.resolve()), str(Path.home()), sys.prefix]
        for name in uploaded:  # every file that would go up, text or binary
            content = (staged / name).read_bytes()
            assert not [path for path in local if path.encode() in content], name
        card = (staged / "README.md").read_text()
        assert 'pipeline("image-classification", model="me/model")' in card and "# model" in card
        assert "file" not in json.loads((staged / "config.json").read_text())["pretrained_cfg"]
        args = json.loads((staged / "training_args.json").read_text())
        assert args["output_dir"] == "run"  # a path outside the folder keeps only its name
        check_reload(staged, 10)  # what goes up still loads with the Auto classes, preprocessing included
    finally:
        shutil.rmtree(staged)
    # the local folder is left as it was: its card still shows the local path, for use on this machine
    assert str(pushable) in (pushable / "README.md").read_text() or "me/model" not in (pushable / "README.md").read_text()
    (pushable / "notes.txt").write_text(f"trained in {pushable.resolve()}\n")
    with pytest.raises(TransferError, match=r"^notes.txt in .* names the local folder .*; it would be uploaded as is"):
        push_folder(pushable, "me/model", dry_run=True)
