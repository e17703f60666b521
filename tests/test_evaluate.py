"""evaluate.py end to end: a run's validation split, saved maps from any method, and clear errors."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import metrics
from dataset import read_mask

ROOT = Path(__file__).resolve().parents[1]


def cli(cwd: Path, script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, synthetic_root) -> Path:
    work = tmp_path_factory.mktemp("eval")
    trained = cli(work, "train.py", "--dataset", "SYN", "--data-dir", synthetic_root, "--crop", "64", "--base-width",
                  "4", "--workers", "0", "--epochs", "1", "--val-split", "0.25", "--name", "r")
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = cli(work, "evaluate.py", "--name", "r", "--test", "SYN", "--tolerance", "0", "2", "--save-images")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "validation images only" in result.stdout and "SYN" in result.stdout
    return work


def test_a_runs_own_dataset_is_scored_on_its_validation_split_only(evaluated):
    out = evaluated / "models" / "r" / "eval" / "SYN"
    summary = json.loads((out / "metrics.json").read_text())
    val = json.loads((evaluated / "models" / "r" / "split.json").read_text())["SYN"]["val"]
    assert summary["dataset"] == "SYN" and summary["images"] == len(val) == 3
    assert [r["tolerance"] for r in summary["results"]] == [0, 2]
    first = summary["results"][0]
    assert set(first) == {"tolerance", "ods", "ois", "ods_mean", "ois_mean", "ap", "at_run_threshold", "f1_curve"}
    assert max(first["f1_curve"]) == pytest.approx(first["ods"]["f1"], abs=1e-6)
    threshold = json.loads((evaluated / "models" / "r" / "config.json").read_text())["threshold"]
    assert set(first["at_run_threshold"]) == {"threshold", "precision", "recall", "f1"}
    assert first["at_run_threshold"]["threshold"] == threshold
    assert set(first["ods"]) == set(first["ods_mean"]) == {"threshold", "precision", "recall", "f1"}
    assert set(first["ois"]) == {"precision", "recall", "f1"} and set(first["ois_mean"]) == {"f1"}
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["name"] for r in rows}) == val and len(rows) == 6 and "f1_at_run" in rows[0]
    assert sorted(p.name for p in out.glob("*_panel.jpg")) == [f"{v}_panel.jpg" for v in val]
    panel = cv2.imread(str(out / f"{val[0]}_panel.jpg"))
    assert panel.shape[1] > 4 * 128          # input | truth | prediction | overlay


def test_pred_dir_scores_saved_maps_exactly_like_the_metric_functions(evaluated, synthetic_root, tmp_path):
    maps = evaluated / "models" / "r" / "eval" / "SYN"
    val = json.loads((evaluated / "models" / "r" / "split.json").read_text())["SYN"]["val"]
    data = tmp_path / "data" / "VAL"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for stem in val:
        shutil.copy(synthetic_root / "SYN" / "images" / f"{stem}.jpg", data / "images")
        shutil.copy(synthetic_root / "SYN" / "masks" / f"{stem}.png", data / "masks")
    result = cli(tmp_path, "evaluate.py", "--pred-dir", maps, "--test", "VAL", "--data-dir", tmp_path / "data",
                 "--tolerance", "0", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    scored = json.loads((maps / "eval" / "VAL" / "metrics.json").read_text())
    for i, tolerance in enumerate((0, 2)):
        counts = np.stack([metrics.image_counts(cv2.imread(str(maps / f"{s}_prob.png"), cv2.IMREAD_GRAYSCALE),
                                                read_mask(data / "masks" / f"{s}.png"), tolerance=tolerance)
                           for s in val])
        expected = metrics.summarize(counts)
        assert scored["results"][i]["ods"] == pytest.approx(expected["ods"])
        assert scored["results"][i]["ap"] == pytest.approx(expected["ap"])
        assert "at_run_threshold" not in scored["results"][i]     # maps from elsewhere have no run threshold


def test_missing_or_mis_sized_maps_are_named(evaluated, synthetic_root, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    missing = cli(tmp_path, "evaluate.py", "--pred-dir", maps, "--test", "SYN", "--data-dir", synthetic_root)
    assert missing.returncode == 2 and "no prediction map for syn_000" in missing.stderr
    assert "Traceback" not in missing.stderr
    for stem in [p.stem for p in (synthetic_root / "SYN" / "masks").iterdir()]:
        cv2.imwrite(str(maps / f"{stem}.png"), np.zeros((5, 5), np.uint8))
    wrong = cli(tmp_path, "evaluate.py", "--pred-dir", maps, "--test", "SYN", "--data-dir", synthetic_root)
    assert wrong.returncode == 2 and "is 5x5 but its mask is 128x96" in wrong.stderr


def test_tta_results_go_to_their_own_folder_and_keep_the_plain_ones(evaluated, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(evaluated, work)
    plain = work / "models" / "r" / "eval" / "SYN" / "metrics.json"
    before = plain.read_text()
    result = cli(work, "evaluate.py", "--name", "r", "--test", "SYN", "--tolerance", "0", "--tta")
    assert result.returncode == 0, result.stderr[-2000:]
    assert plain.read_text() == before
    tta = json.loads((work / "models" / "r" / "eval" / "SYN_tta" / "metrics.json").read_text())
    assert tta["images"] == 3 and 0 <= tta["results"][0]["ods"]["f1"] <= 1


def test_an_ensemble_scores_the_mean_probability_of_its_members(evaluated, synthetic_root, tmp_path):
    from synthetic import make_synthetic_dataset
    work = tmp_path / "copy"
    shutil.copytree(evaluated, work)
    make_synthetic_dataset(work / "inputs", "OTHER", count=3, size=(96, 128), seed=7)
    common = ["--dataset", "SYN", "--data-dir", synthetic_root, "--crop", "64", "--base-width", "4",
              "--workers", "0", "--epochs", "1", "--val-split", "0.25"]
    trained = cli(work, "train.py", *common, "--name", "s1", "--seed", "1")
    assert trained.returncode == 0, trained.stderr[-2000:]
    shutil.copytree(work / "models" / "r", work / "models" / "c")   # r, but preprocessed with CLAHE
    config = json.loads((work / "models" / "c" / "config.json").read_text())
    (work / "models" / "c" / "config.json").write_text(json.dumps({**config, "clahe": True}))
    maps = {}
    for name in ("r", "s1", "r+s1"):
        result = cli(work, "evaluate.py", "--name", name, "--test", "OTHER", "--data-dir", work / "inputs",
                     "--tolerance", "0", "--save-images")
        assert result.returncode == 0, result.stderr[-2000:]
        maps[name] = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).astype(float)
                      for p in sorted((work / "models" / name / "eval" / "OTHER").glob("*_prob.png"))]
    assert len(maps["r+s1"]) == 3
    for single_r, single_s1, both in zip(maps["r"], maps["s1"], maps["r+s1"], strict=True):
        assert np.abs(both - (single_r + single_s1) / 2).max() <= 1.0   # 8-bit rounding of three maps
        assert np.abs(single_r - single_s1).max() > 5                   # two different models

    # on the members' own dataset: only images in every member's validation split (two of three shared here,
    # then none: the split files are edited so that both cases are tested whatever the seeds draw)
    r_split = json.loads((work / "models" / "r" / "split.json").read_text())["SYN"]
    stems = sorted(r_split["train"] + r_split["val"])
    for s1_val, images in ((r_split["val"][:2] + [r_split["train"][0]], 2), (r_split["train"][:3], 0)):
        s1_split = {"SYN": {"train": sorted(set(stems) - set(s1_val)), "val": sorted(s1_val)}}
        (work / "models" / "s1" / "split.json").write_text(json.dumps(s1_split))
        own = cli(work, "evaluate.py", "--name", "r+s1", "--test", "SYN", "--tolerance", "0")
        if images:
            assert own.returncode == 0, own.stderr[-2000:]
            assert json.loads((work / "models" / "r+s1" / "eval" / "SYN" / "metrics.json").read_text())["images"] == 2
        else:
            assert own.returncode == 2 and "left no image of SYN" in own.stderr

    mixed = cli(work, "evaluate.py", "--name", "r+c", "--test", "OTHER", "--data-dir", work / "inputs")
    assert mixed.returncode == 2 and "clahe" in mixed.stderr and "Traceback" not in mixed.stderr
    plus = cli(work, "train.py", *common, "--name", "a+b")
    assert plus.returncode == 2 and "ensemble" in plus.stderr


def test_at_run_threshold_is_an_explicit_count_at_that_threshold():
    import evaluate
    rng = np.random.default_rng(0)
    probs = [rng.random((9, 11)) for _ in range(3)]
    gts = [rng.random((9, 11)) > 0.7 for _ in range(3)]
    result = {"names": ["a", "b", "c"], "counts": {0: np.stack([metrics.image_counts(p, g) for p, g in
                                                               zip(probs, gts, strict=True)])}}
    summary, per_image = evaluate.summarize_all(result, "D", [0], threshold=0.37)
    predicted = [p > 0.37 for p in probs]
    tp = sum(int((p & g).sum()) for p, g in zip(predicted, gts, strict=True))
    precision, recall = tp / sum(int(p.sum()) for p in predicted), tp / sum(int(g.sum()) for g in gts)
    at_run = summary["results"][0]["at_run_threshold"]
    assert at_run == pytest.approx({"threshold": 0.37, "precision": precision, "recall": recall,
                                    "f1": 2 * precision * recall / (precision + recall)})
    first = (predicted[0] & gts[0]).sum()
    assert per_image[0]["f1_at_run"] == pytest.approx(2 * first / (predicted[0].sum() + gts[0].sum()))


def test_a_negative_tolerance_exits_2_with_a_message(capsys):
    import evaluate
    with pytest.raises(SystemExit) as exit_:
        evaluate.get_args(["--name", "r", "--test", "SYN", "--tolerance", "-1"])
    assert exit_.value.code == 2 and "--tolerance values must be >= 0" in capsys.readouterr().err


def test_panels_show_the_prediction_at_the_runs_stored_threshold(tmp_path):
    """The panel's prediction is p > the run's threshold (what predict.py's masks use), labelled."""
    import evaluate
    from dataset import Sample
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "i.png"), rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    truth = np.zeros((60, 80), np.uint8)
    truth[30, 10:70] = 255
    cv2.imwrite(str(tmp_path / "m.png"), truth)
    prob = np.tile(np.linspace(0, 1, 80, dtype=np.float32), (60, 1))   # p grows left to right
    panel = evaluate.error_panel(Sample("i", tmp_path / "i.png", tmp_path / "m.png"), prob, 0.3)
    assert panel.shape == (60, 4 * 80 + 3 * 4, 3)
    pred = panel[24:, 2 * 84:2 * 84 + 80, 0] > 127           # below the label box
    np.testing.assert_array_equal(pred, prob[24:] > 0.3)
    assert (panel[:12, 2 * 84:2 * 84 + 40] != panel[:12, 2 * 84:2 * 84 + 40].flat[0]).any()   # the label is drawn
