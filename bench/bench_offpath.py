"""An off-path trial: architectures the conformance suite has never seen, through every conformance check.

Each architecture (tiny random-weight config) goes through tests/test_conformance.py's checks: depth groups in forward
order, a partial-freeze training step that leaves frozen weights and BatchNorm statistics bit-identical, per-depth
features, an exported probe equal to the probe, an input-size change or a one-line refusal, and the per-image
pipeline() parity of the saved folder in a fresh process without hf_transfer. A failure is a silent wrong result
caught (parity, export) or a crash; a one-line refusal of an input size is a pass.

    python bench/bench_offpath.py        # -> bench/results/offpath.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import pytest

    import test_conformance as tc

    timm, hf, timm_folder = tc._timm, tc._hf, tc._timm_folder
    offpath = {
        "timm byobnet": (timm("test_byobnet"), 64, "timm", 96, "resized"),
        "timm coatnet": (timm("test_coatnet", img_size=64), 64, "timm", 96, "resized"),
        "timm convnext2": (timm("test_convnext2"), 32, "timm", 48, "resized"),
        "timm efficientnet gn": (timm("test_efficientnet_gn"), 32, "timm", 48, "resized"),
        "timm efficientnet ln": (timm("test_efficientnet_ln"), 32, "timm", 48, "resized"),
        "timm efficientnet evos": (timm("test_efficientnet_evos"), 32, "timm", 48, "resized"),
        "timm mambaout": (timm("test_mambaout"), 64, "timm", 96, "resized"),
        "timm vit2": (timm("test_vit2", img_size=32), 32, "timm", 64, "resized"),
        "timm vit3": (timm("test_vit3", img_size=32), 32, "timm", 64, "resized"),
        "timm vit relpos": (timm("test_vit_relpos", img_size=32), 32, "timm", 64, "resized"),
        "timm ghostnet": (timm("ghostnet_050"), 64, "timm", 96, "resized"),
        "timm folder repvit": (timm_folder("repvit_m0_9", embed_dim=(16, 32, 48, 64), depth=(1, 1, 1, 1)), 64,
                               "timm distilled", 96, "resized"),
        "hf poolformer": (hf("PoolFormerConfig", "PoolFormerForImageClassification", hidden_sizes=[16, 32, 48, 64],
                             depths=[1, 1, 1, 1]), 64, "transformers", 96, "resized"),
        "hf mobilevitv2": (hf("MobileViTV2Config", "MobileViTV2ForImageClassification", width_multiplier=0.25,
                              image_size=64), 64, "transformers", 96, "resized"),
        "hf deit": (hf("DeiTConfig", "DeiTForImageClassification", hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=20, image_size=32, patch_size=8), 32,
                    "transformers ViT-style", 64, "resized"),
        "hf vit msn": (hf("ViTMSNConfig", "ViTMSNForImageClassification", hidden_size=16, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=20, image_size=32, patch_size=8), 32,
                       "transformers ViT-style", 64, "resized"),
    }
    tc.ARCHITECTURES.clear()
    tc.ARCHITECTURES.update(offpath)
    # the parametrize mark was built from the suite's own list when the module was imported: rebuild it
    test = tc.test_backbone_conformance
    test.pytestmark = [m for m in test.pytestmark if m.name != "parametrize"] + [
        pytest.mark.parametrize("name", list(offpath)).mark]
    report = Path(tempfile.mkdtemp()) / "junit.xml"
    start = time.perf_counter()
    pytest.main([str(TESTS / "test_conformance.py"), "-q", "-p", "no:cacheprovider", f"--junitxml={report}"])
    seconds = time.perf_counter() - start
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        failure = case.find("failure") if case.find("failure") is not None else case.find("error")
        results[case.get("name")] = {"passed": failure is None and case.find("skipped") is None,
                                     "message": None if failure is None else (failure.get("message") or "")[:400]}
    out = {"command": "python bench/bench_offpath.py", "architectures": sorted(offpath), "seconds": round(seconds, 1),
           "load_average": os.getloadavg()[0], "results": results,
           "passed": sum(r["passed"] for r in results.values()), "total": len(results)}
    path = ROOT / "bench" / "results" / "offpath.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("passed", "total", "seconds")}))
    for name, result in results.items():
        if not result["passed"]:
            print(name, "->", result["message"])


if __name__ == "__main__":
    main()
