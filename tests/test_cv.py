"""Cross-validation: stratified disjoint folds covering the train split, the fold data each run gets, the shared image
store, mean ± std and the choice, and one real run per recipe (tiny model, tiny imbalanced image folder)."""

import json

import numpy as np
import pytest
import torch

from hf_transfer.cv import CVResult, FoldResult, SettingResult, cross_validate, fold_data, parse_search, stratified_folds
from hf_transfer.errors import TransferError


def test_folds_are_stratified_disjoint_and_cover_the_train_split():
    labels = np.array([0] * 30 + [1] * 12 + [2] * 6)
    folds = stratified_folds(labels, 3, seed=0)
    held = np.concatenate([v for _, v in folds])
    assert sorted(held.tolist()) == list(range(len(labels)))  # every image in exactly one validation fold
    for train, validation in folds:
        assert set(train).isdisjoint(validation) and len(train) + len(validation) == len(labels)
        assert np.bincount(labels[validation]).tolist() == [10, 4, 2]  # each class keeps its share
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, stratified_folds(labels, 3, seed=0)))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, stratified_folds(labels, 3, seed=1)))
    with pytest.raises(TransferError, match="rarest has 6"):
        stratified_folds(labels, 7, seed=0)


def test_search_parses_into_every_combination():
    assert parse_search([]) == [{}]
    assert parse_search(["learning_rate=1e-3,3e-3", "freeze=depth:2,depth:4"]) == [
        {"learning_rate": "1e-3", "freeze": "depth:2"}, {"learning_rate": "1e-3", "freeze": "depth:4"},
        {"learning_rate": "3e-3", "freeze": "depth:2"}, {"learning_rate": "3e-3", "freeze": "depth:4"}]
    for bad in (["learning_rate"], ["=1,2"], ["strategy=full,full"]):
        with pytest.raises(TransferError, match="--search"):
            parse_search(bad)


@pytest.fixture(scope="module")
def digits():
    from hf_transfer.data import load_image_classification_data

    return load_image_classification_data("embedded:digits", max_train_samples=60, seed=0)


def test_each_run_gets_its_fold_and_the_scores_are_summarized(digits):
    labels = np.asarray(digits.splits["train"]["label"])
    seen = []

    def run_fold(data, setting, fold):
        seen.append((setting["lr"], fold, data))
        score = {"a": [0.5, 0.7, 0.9], "b": [0.8, 0.8, 0.8]}[setting["lr"]][fold]
        return {"eval_accuracy": score, "eval_macro_f1": score - 0.1, "eval_samples": 20}

    result = cross_validate(digits, run_fold, folds=3, seed=4, settings=[{"lr": "a"}, {"lr": "b"}])
    expected = stratified_folds(labels, 3, seed=4)
    assert [(lr, fold) for lr, fold, _ in seen] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    for _, fold, data in seen:
        train_rows, held_rows = expected[fold]
        assert data.splits["validation"]["label"] == labels[held_rows].tolist()
        assert data.splits["train"]["label"] == labels[train_rows].tolist()
        assert "test" not in data.splits and data.labels == digits.labels
    assert seen[0][2].subset_store.pixels is seen[4][2].subset_store.pixels  # one decode for every fold
    a, b = result.settings
    assert a.per_fold["accuracy"] == [0.5, 0.7, 0.9]
    assert a.mean["accuracy"] == pytest.approx(0.7) and a.std["accuracy"] == pytest.approx(0.2)  # ddof=1
    assert result.chosen is b and result.mean["macro_f1"] == pytest.approx(0.7) and result.std["accuracy"] == pytest.approx(0.0, abs=1e-12)
    assert result.choose("accuracy") is b
    assert [f.validation_samples for f in a.folds] == [len(v) for _, v in expected]


def test_fold_metrics_read_both_recall_shapes():
    from hf_transfer.cv import fold_metrics

    flat = fold_metrics({"eval_accuracy": 0.5, "eval_macro_f1": 0.4, "eval_recall/a": 1.0, "eval_samples": 9, "train_loss": 2,
                         "train_runtime": 3})
    assert flat.pop("train_runtime") == 3.0
    nested = fold_metrics({"eval_accuracy": 0.5, "eval_macro_f1": 0.4, "eval_per_class_recall": {"a": 1.0}})  # probe job
    assert flat == nested == {"accuracy": 0.5, "macro_f1": 0.4, "recall/a": 1.0}


def test_ties_go_to_accuracy_then_to_the_first_setting():
    def setting(name, acc, f1):
        return SettingResult({"x": name}, [FoldResult(0, 2, 1, {"accuracy": acc, "macro_f1": f1}, 0.0)])

    result = CVResult([setting("a", 0.8, 0.7), setting("b", 0.9, 0.7), setting("c", 0.9, 0.7)], folds=1, seed=0)
    assert result.chosen.setting == {"x": "b"}


def test_the_fold_image_store_equals_decoding_each_fold(digits):
    from hf_transfer.backbones import load_backbone_with_adapter
    from hf_transfer.fastdata import prepare_splits

    _, adapter = load_backbone_with_adapter("test_resnet", labels=digits.labels, pretrained=False)
    cfg = adapter.data_config()
    labels = digits.splits["train"]["label"]
    (train_rows, held_rows), second = stratified_folds(labels, 2, seed=0)
    fold = fold_data(digits, train_rows, held_rows)
    shared, _, _ = prepare_splits(fold, fold.splits, cfg, image_size=24, augmentation="none")
    plain = type(digits)(fold.splits, digits.image_column, digits.label_column, digits.labels, digits.source)
    alone, _, _ = prepare_splits(plain, plain.splits, cfg, image_size=24, augmentation="none")
    for name in ("train", "validation"):
        assert torch.equal(shared[name].pixels, alone[name].pixels) and torch.equal(shared[name].labels, alone[name].labels)
    other = fold_data(digits, *second, store=fold.subset_store)
    prepare_splits(other, other.splits, cfg, image_size=24, augmentation="none")
    assert len(fold.subset_store.pixels) == 1  # the second fold reused the first one's decode


@pytest.fixture(scope="module")
def imbalanced_folder(tmp_path_factory):
    """train: 16 zeros, 6 ones, 4 twos (8x8 digits); validation: 2 of each."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("imbalanced")
    for split, sizes in (("train", (16, 6, 4)), ("validation", (2, 2, 2))):
        for cls, n in enumerate(sizes):
            (root / split / f"d{cls}").mkdir(parents=True)
            images = digits.images[digits.target == cls][-n:] if split == "validation" else digits.images[digits.target == cls][:n]
            for i, image in enumerate(images):
                Image.fromarray((image * 15).astype(np.uint8)).save(root / split / f"d{cls}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def finetune_cv(imbalanced_folder, tmp_path_factory):
    from hf_transfer.jobs.cross_validate import run_cross_validation

    out = tmp_path_factory.mktemp("cv") / "run"
    result = run_cross_validation([
        "--model_name_or_path", "test_resnet", "--no_pretrained", "--train_dir", str(imbalanced_folder / "train"),
        "--validation_dir", str(imbalanced_folder / "validation"), "--image_size", "32", "--per_device_train_batch_size", "8",
        "--class_weighting", "balanced", "--folds", "2", "--search", "learning_rate=1e-2,5e-2", "--keep_fold_models",
        "--output_dir", str(out), "--disable_tqdm", "true", "--logging_steps", "100"])
    return result, out


@pytest.mark.slow
def test_cv_folder_reports_every_fold_and_mean_std(finetune_cv):
    result, out = finetune_cv
    assert {"all_results.json", "cv_results.json", "cv_results.md", "cv_results.png", "folds"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob(".staging*"))
    saved = json.loads((out / "cv_results.json").read_text())
    assert [s["setting"] for s in saved["settings"]] == [{"learning_rate": "1e-2"}, {"learning_rate": "5e-2"}]
    for setting in saved["settings"]:
        for metric in ("accuracy", "macro_f1"):
            values = setting["per_fold"][metric]
            assert len(values) == 2
            assert setting["mean"][metric] == pytest.approx(np.mean(values))
            assert setting["std"][metric] == pytest.approx(np.std(values, ddof=1))
        assert [f["train_samples"] for f in setting["folds"]] == [13, 13]
    best = max(saved["settings"], key=lambda s: (s["mean"]["macro_f1"], s["mean"]["accuracy"]))
    summary = json.loads((out / "all_results.json").read_text())
    assert summary["chosen_setting"] == best["setting"] == result.chosen.setting
    assert summary["cv_accuracy_mean"] == pytest.approx(best["mean"]["accuracy"])
    table = (out / "cv_results.md").read_text()
    assert "mean ± std" in table and f"{best['mean']['accuracy']:.4f} ± {best['std']['accuracy']:.4f}" in table
    assert CVResult.read(out).chosen.setting == result.chosen.setting
    recall = saved["chosen"]["class_recall_mean"]
    assert set(recall) == {"d0", "d1", "d2"}
    assert recall["d1"] == pytest.approx(np.mean([f["metrics"]["recall/d1"] for f in saved["chosen"]["folds"]]))
    assert "Lowest mean class recall" in table


@pytest.mark.slow
def test_fold_runs_use_class_weights_and_report_per_class_recall(finetune_cv):
    from hf_transfer.imbalance import balanced_class_weights

    _, out = finetune_cv
    folds = sorted((out / "folds").glob("*/fold-*"))
    assert len(folds) == 4
    for folder in folds:
        results = json.loads((folder / "all_results.json").read_text())
        assert results["train_class_counts"] == {"d0": 8, "d1": 3, "d2": 2}  # the fold's train rows, stratified
        expected = balanced_class_weights([8, 3, 2]).tolist()
        assert list(results["class_weights"].values()) == pytest.approx(expected, rel=1e-5)
        recall = {k.split("/")[1]: v for k, v in results.items() if k.startswith("eval_recall/")}
        assert set(recall) == {"d0", "d1", "d2"} and results["eval_samples"] == 13
        # the recalls weighted by the validation fold's class sizes give back the accuracy
        assert (8 * recall["d0"] + 3 * recall["d1"] + 2 * recall["d2"]) / 13 == pytest.approx(results["eval_accuracy"])
        card = (folder / "README.md").read_text()
        assert "Recall per class" in card and "class-weighted cross-entropy" in card
        assert json.loads((folder / "transfer_plan.json").read_text())["config"]["class_weighting"] == "balanced"


@pytest.mark.slow
def test_probe_recipe_cross_validates_and_drops_fold_models(tmp_path):
    from hf_transfer.jobs.cross_validate import cross_validate_recipe

    result = cross_validate_recipe(
        ["--model_name_or_path", "test_resnet", "--no_pretrained", "--dataset_name", "embedded:digits",
         "--max_train_samples", "60", "--image_size", "32", "--layers", "pooled", "--probe", "logreg",
         "--no_feature_cache"], recipe="linear_probe", folds=2, seed=1, output_dir=tmp_path / "probe")
    assert len(result.per_fold["accuracy"]) == 2 and 0.0 <= result.mean["accuracy"] <= 1.0
    assert not (tmp_path / "probe" / "folds").exists()  # no --keep_fold_models: scores only
    assert json.loads((tmp_path / "probe" / "all_results.json").read_text())["recipe"] == "linear_probe"


@pytest.mark.parametrize("flags, message", [
    (["--folds", "1"], "at least 2 folds"),
    (["--search", "seed=1,2"], "--search cannot vary seed"),
    (["--search", "learning_rate=fast"], "--learning_rate: invalid float value"),
    (["--search", "strategy=partial"], "--strategy partial needs a --freeze rule"),
    (["--recipe", "svm"], "--recipe 'svm' is unknown"),
    (["--push_to_hub"], "--push_to_hub does not apply"),
    (["--search", "learning_rate=1e-2,3e-2", "--search", "freeze=depth:2"], "--search is given more than once"),
])
def test_bad_flags_fail_before_loading_anything(flags, message, tmp_path):
    from hf_transfer.jobs.cross_validate import run_cross_validation

    with pytest.raises(TransferError, match=message.replace("(", r"\(")):
        run_cross_validation(["--dataset_name", "embedded:digits", "--output_dir", str(tmp_path / "x"), *flags])
    assert not (tmp_path / "x").exists()


def test_cli_cv_command_fails_in_one_line(capsys):
    from hf_transfer.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["cv", "--folds", "1"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == "hf-transfer cv: error: --folds 1: cross-validation needs at least 2 folds"
