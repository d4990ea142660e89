"""vistok-eval reads a Hub dataset id (through the local fake Hub)."""

import json

import pytest

from hub_fixtures import fake_hub, hub_client  # noqa: F401  (pytest fixtures)
from test_tokenize_dataset import image_dir, titok_dir  # noqa: F401  (pytest fixtures)
from vistok.evaluation import main as eval_main


def test_eval_on_a_hub_dataset_id(titok_dir, image_dir, tmp_path, hub_client, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    monkeypatch.setattr(datasets.config, "USE_PARQUET_EXPORT", False)  # no datasets-server look-up; read the files
    # datasets reads HF_ENDPOINT and the offline flag once, at its import (maybe under another test's fake Hub)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub_client.hub.endpoint)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL",
                        hub_client.hub.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")
    from huggingface_hub import HfApi

    # a Hub dataset as `push_to_hub` lays it out: parquet files with embedded images under data/
    local = datasets.load_dataset("imagefolder", data_dir=str(image_dir), split="train")
    (tmp_path / "repo" / "data").mkdir(parents=True)
    local.to_parquet(str(tmp_path / "repo" / "data" / "validation-00000-of-00001.parquet"))
    api = HfApi()
    api.create_repo("vistok-tests/eval-images", repo_type="dataset", exist_ok=True)
    api.upload_folder(repo_id="vistok-tests/eval-images", repo_type="dataset", folder_path=str(tmp_path / "repo"))
    report_dir = tmp_path / "report"
    assert eval_main([str(titok_dir), "vistok-tests/eval-images", "--output-dir", str(report_dir), "--no-progress",
                      "--max-images", "3"]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    local_dir = tmp_path / "local"
    assert eval_main([str(titok_dir), str(image_dir), "--output-dir", str(local_dir), "--no-progress",
                      "--max-images", "3"]) == 0
    expected = json.loads((local_dir / "report.json").read_text())
    assert report["num_images"] == 3 and report["split"] == "validation"
    assert [r["psnr"] for r in report["images"]] == pytest.approx([r["psnr"] for r in expected["images"]], abs=1e-6)
    assert not hub_client.hub.unhandled
