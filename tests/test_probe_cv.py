"""Cross-validation of the probe reuses features across folds: each image goes through the backbone once."""

import pytest


@pytest.mark.slow
def test_three_fold_probe_cross_validation_computes_each_image_once(tmp_path, monkeypatch):
    from hf_transfer.features import cache as cache_module
    from hf_transfer.features import row_keys
    from hf_transfer.jobs.cross_validate import cross_validate_recipe

    monkeypatch.setenv("HF_TRANSFER_CACHE", str(tmp_path / "cache"))
    forwarded = []  # the image keys of every row pushed through the backbone
    real = cache_module.extract_features

    def counting(model, dataset, *args, **kwargs):
        forwarded.extend(row_keys(dataset)[0])
        return real(model, dataset, *args, **kwargs)

    monkeypatch.setattr(cache_module, "extract_features", counting)
    result = cross_validate_recipe(
        ["--model_name_or_path", "test_resnet", "--no_pretrained", "--dataset_name", "embedded:digits",
         "--image_size", "32", "--max_train_samples", "60", "--max_eval_samples", "10", "--layers", "1,pooled",
         "--probe", "logreg", "--cv_folds", "2"],
        recipe="linear_probe", folds=3, output_dir=str(tmp_path / "cv"))
    assert len(result.per_fold["accuracy"]) == 3
    from hf_transfer.data import load_image_classification_data

    train = load_image_classification_data("embedded:digits", max_train_samples=60, max_eval_samples=10).splits["train"]
    images = set(row_keys(train)[0])
    assert len(forwarded) == len(set(forwarded))  # no image twice, whichever fold or split it was in
    assert set(forwarded) == images  # every training image once: fold 1 computes them all, folds 2 and 3 none
