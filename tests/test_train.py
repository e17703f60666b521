"""train.py end to end on generated data, in subprocesses exactly as a user runs it."""
import copy
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import metrics
from losses import compute_loss

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "SYN", "--crop", "64", "--batch-size", "4", "--base-width", "4", "--workers", "0",
        "--val-split", "0.25"]


def run(script: str, *args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def log_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, synthetic_root) -> Path:
    """A finished one-epoch TINY run (models/one, runs/one), trained once for the tests that start from one."""
    work = tmp_path_factory.mktemp("one_epoch")
    run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "1", "--name", "one", cwd=work)
    return work


def copy_run(work: Path, name: str, dest: Path) -> None:
    for folder in ("models", "runs"):
        shutil.copytree(work / folder / "one", dest / folder / name)


def test_short_training_run_leaves_a_complete_run_directory(tmp_path, synthetic_root):
    run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "2", cwd=tmp_path)
    run_dir = tmp_path / "models" / "SYN_UNet"
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "config.json", "last.pt", "log.csv",
                                                         "split.json"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == "UNet" and config["lr"] == 0.01 and "torch" in config["provenance"]
    assert 0 <= config["threshold"] <= 1
    split = json.loads((run_dir / "split.json").read_text())
    assert list(split) == ["SYN"] and len(split["SYN"]["val"]) == 3 and len(split["SYN"]["train"]) == 9
    rows = log_rows(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "val_loss", "val_iou", "val_f1", "lr", "data_wait"} <= set(rows[0])
    assert list((tmp_path / "runs" / "SYN_UNet").glob("events.out.tfevents.*"))
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["epoch"] == 2

    # the same command again gets a new name; an explicit existing name is refused
    run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "1", cwd=tmp_path)
    assert (tmp_path / "models" / "SYN_UNet_2" / "best.pt").exists()
    refused = run("train.py", *TINY, "--data-dir", synthetic_root, "--name", "SYN_UNet", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "already exists" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("arch", ["NestedUNet", "AttentionUNet"])
def test_every_arch_trains_from_the_command_line(tmp_path, synthetic_root, arch):
    extra = ["--deep-supervision"] if arch == "NestedUNet" else []
    run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "1", "--arch", arch, *extra, cwd=tmp_path)
    assert (tmp_path / "models" / f"SYN_{arch}" / "best.pt").exists()


def test_a_small_model_learns_the_synthetic_cracks(tmp_path, synthetic_root):
    run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "25", "--lr", "3e-3", "--base-width", "8",
        "--crop", "96", "--batch-size", "3", "--name", "learn", cwd=tmp_path)
    rows = log_rows(tmp_path / "models" / "learn")
    assert float(rows[-1]["train_loss"]) < 0.85 * float(rows[0]["train_loss"])
    assert float(rows[0]["val_ods_f1"]) < 0.2 < 0.5 < max(float(r["val_ods_f1"]) for r in rows)


def test_weight_average_ramps_its_decay_and_copies_integer_buffers():
    import training
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    average = training.WeightAverage(model, decay=0.5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone() for k, v in start.items() if v.is_floating_point()}
    for n in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model(torch.randn(2, 1, 5, 5))   # moves the running statistics and num_batches_tracked
        average.update()
        decay = min(0.5, (1 + n) / (10 + n))   # 2/11, 3/12, 4/13: the ramp, not yet 0.5
        for k in expected:
            expected[k] = decay * expected[k] + (1 - decay) * model.state_dict()[k]
    for k, v in average.model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, expected[k])
            assert not torch.equal(v, model.state_dict()[k])
        else:
            assert int(v) == int(model.state_dict()[k]) == 3
    assert not average.model.training and not any(p.requires_grad for p in average.model.parameters())


def test_ema_run_validates_the_average_and_resumes_exactly(tmp_path, synthetic_root):
    import train
    from engine import make_engine
    from inference import EvalOptions, evaluate
    from predictor import Predictor
    from rundir import model_from_config
    args = [*TINY, "--data-dir", synthetic_root, "--epochs", "3", "--ema", "0.9", "--precision", "fp32",
            "--no-channels-last", "--lr", "3e-3", "--deterministic"]
    run("train.py", *args, "--name", "straight", cwd=tmp_path)
    run("train.py", *args, "--name", "cut", "--epochs", "1", cwd=tmp_path)
    assert len(log_rows(tmp_path / "models" / "cut")) == 1
    run("train.py", "--resume", "cut", "--epochs", "3", cwd=tmp_path)
    for column in ("train_loss", "val_loss", "val_ods_f1"):
        assert [float(r[column]) for r in log_rows(tmp_path / "models" / "cut")] == pytest.approx(
            [float(r[column]) for r in log_rows(tmp_path / "models" / "straight")], abs=1e-5)

    # the logged validation loss is that of the averaged weights, saved as "model"
    state = torch.load(tmp_path / "models" / "straight" / "last.pt", weights_only=True)
    engine = make_engine("cpu", "fp32", False)
    val_set = train.prepare_data(train.get_args([str(a) for a in args]), engine)[1]["SYN"]
    losses = {}
    for key in ("model", "raw_model"):
        model = model_from_config(state["config"])
        model.load_state_dict(state[key])
        predictor = Predictor(model, engine, {"scale": 1.0})
        losses[key] = evaluate(predictor, val_set, EvalOptions(loss_name="BCEDiceLoss"))["loss"]
    assert losses["model"] == pytest.approx(float(log_rows(tmp_path / "models" / "straight")[-1]["val_loss"]),
                                            abs=1e-5)
    assert abs(losses["raw_model"] - losses["model"]) > 1e-4
    assert state["average_updates"] == 3 * 2   # 9 training images, batch 4, last partial batch dropped


# ---------------------------------------------------------------- schedule, resume, overwrite (review findings)

def test_progress_is_the_larger_of_steps_and_budget_and_the_cosine_ends_at_min_lr():
    import training
    assert training.planned_fraction(10, 0.0, 100, None) == 0.1
    assert training.planned_fraction(10, 30.0, 100, 1.0) == 0.5           # half of one minute spent
    assert training.planned_fraction(90, 30.0, 100, 1.0) == 0.9
    assert training.planned_fraction(10, 90.0, 100, 1.0) == 1.0           # capped
    assert training.cosine_lr(0.0, 1e-3, 1e-6) == 1e-3
    assert training.cosine_lr(1.0, 1e-3, 1e-6) == pytest.approx(1e-6)
    assert training.cosine_lr(0.5, 1e-3, 0.0) == pytest.approx(5e-4)


def test_a_budgeted_cosine_run_stops_on_time_and_ends_annealed(tmp_path, synthetic_root):
    """Before, T_max was --epochs: a run the clock stopped after a few of 1000 epochs kept its full lr."""
    done = run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "1000", "--max-minutes", "0.25",
               "--batch-size", "1", "--scheduler", "CosineAnnealingLR", "--lr", "1e-2", "--min-lr", "0", "--name", "b",
               cwd=tmp_path)
    assert "stopped: --max-minutes 0.25 spent" in done.stdout
    rows = log_rows(tmp_path / "models" / "b")
    assert 2 <= len(rows) < 1000
    # the last step's lr: the cosine at the last fraction checked, short of 1 by one step and one validation
    assert float(rows[-1]["lr"]) < 0.1 * 1e-2 < float(rows[0]["lr"])
    finished = run("train.py", "--resume", "b", cwd=tmp_path, check=False)
    assert finished.returncode == 2 and "finished its plan" in finished.stderr


def test_resume_continues_the_schedule_or_recomputes_it_and_says_so(tmp_path, synthetic_root):
    common = [*TINY, "--data-dir", synthetic_root, "--scheduler", "CosineAnnealingLR", "--lr", "1e-2", "--min-lr", "0"]
    run("train.py", *common, "--epochs", "2", "--name", "whole", cwd=tmp_path)
    run("train.py", *common, "--epochs", "4", "--name", "long", cwd=tmp_path)
    more = run("train.py", "--resume", "whole", "--epochs", "4", cwd=tmp_path)
    assert "learning rate jumps from 0 to 0.005" in more.stdout
    # recomputed over the new plan: epochs 3-4 follow the 4-epoch cosine exactly
    lrs = [float(r["lr"]) for r in log_rows(tmp_path / "models" / "whole")]
    assert lrs[2:] == pytest.approx([float(r["lr"]) for r in log_rows(tmp_path / "models" / "long")][2:])


def test_resume_honours_typed_values_and_names_what_it_ignores(tmp_path, monkeypatch, capsys):
    import train
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "r").mkdir(parents=True)
    (tmp_path / "models" / "r" / "config.json").write_text(json.dumps(
        {**vars(train.get_args(["--preset", "fast"])), "epochs": 40, "lr": 0.001}))
    args = train.get_args(["--resume", "r", "--epochs", "100", "--lr", "5"])   # 100 is --epochs' default
    assert (args.epochs, args.lr, args.name) == (100, 0.001, "r")
    assert "ignored: --lr (the run has 0.001)" in capsys.readouterr().out


def test_resuming_a_fine_tuned_run_never_reloads_its_parent(tmp_path, synthetic_root, one_epoch_run):
    copy_run(one_epoch_run, "parent", tmp_path)
    run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "1", "--name", "child", "--init-from", "parent",
        cwd=tmp_path)
    shutil.rmtree(tmp_path / "models" / "parent")
    run("train.py", "--resume", "child", "--epochs", "2", cwd=tmp_path)
    assert len(log_rows(tmp_path / "models" / "child")) == 2


def test_a_fine_tuned_run_takes_its_parents_network_and_can_train_only_the_decoder(tmp_path, synthetic_root):
    run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "1", "--name", "parent",
        "--normalize", "0.5", "0.25", cwd=tmp_path)
    child = ["--dataset", "SYN", "--data-dir", synthetic_root, "--crop", "64", "--workers", "0", "--epochs", "1",
             "--init-from", "parent", "--name", "child"]
    run("train.py", *child, "--freeze-encoder", "--epoch-size", "10", cwd=tmp_path)
    config = json.loads((tmp_path / "models" / "child" / "config.json").read_text())
    assert (config["base_width"], config["normalize"]) == (4, [0.5, 0.25])   # not the defaults 32, None
    assert log_rows(tmp_path / "models" / "child")[0]["steps"] == "2"         # 10 crops, batches of 4
    parent = torch.load(tmp_path / "models" / "parent" / "best.pt", weights_only=True)["model"]
    tuned = torch.load(tmp_path / "models" / "child" / "last.pt", weights_only=True)["model"]
    for key in parent:   # the encoder's weights and BatchNorm statistics are the parent's, the rest moved
        same = torch.equal(parent[key].float(), tuned[key].float())
        if key.startswith("enc."):
            assert same, key
        elif key.endswith("running_mean") or key.endswith(".weight") and key.startswith("head"):
            assert not same, key
    refused = run("train.py", *child, "--base-width", "8", "--overwrite", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "--base-width 8 differs from --init-from parent's 4" in refused.stderr


def test_thickened_labels_reach_training_and_validation_of_that_dataset(synthetic_root):
    import train
    from engine import make_engine
    args = train.get_args(["--dataset", "SYN", "--data-dir", str(synthetic_root), "--thicken-labels", "SYN=2",
                           "--val-split", "0.25"])
    train_set, val_sets, _, _ = train.prepare_data(args, make_engine("cpu", "fp32"))
    assert train_set.thicken == [2] * 9 and val_sets["SYN"].thicken == [2] * 3
    thick = val_sets["SYN"][0]["mask"].sum()
    val_sets["SYN"].thicken = None
    assert thick > 1.5 * val_sets["SYN"][0]["mask"].sum()


def test_the_finetune_preset_sets_the_measured_defaults_and_typed_flags_still_win():
    import train
    from augment import CAMERA_PARTS
    args = train.get_args(["--preset", "finetune", "--dataset", "MINE", "--lr", "1e-4"])
    assert (args.max_minutes, args.epoch_size, args.crop, args.scheduler) == (5, 64, 256, "CosineAnnealingLR")
    assert args.camera_aug == list(CAMERA_PARTS) and args.photometric and args.lr == 1e-4


def test_the_recipe_preset_is_the_recipe_flags_and_no_preset_keeps_the_reference():
    import train
    import trainoptions
    from augment import CAMERA_PARTS
    flags = [*trainoptions.RECIPE_BASE, *trainoptions.RECIPE_CAMERA, *trainoptions.RECIPE_NETWORK,
             *trainoptions.RECIPE_UPSAMPLING]
    assert vars(train.get_args(["--preset", "recipe"])) == {**vars(train.get_args(flags)), "preset": "recipe"}
    recipe = train.get_args(["--preset", "recipe"])
    assert (recipe.crop, recipe.lr, recipe.base_width, recipe.camera_aug) == (256, 1e-3, 4, list(CAMERA_PARTS))
    reference = train.get_args([])
    assert (reference.crop, reference.batch_size, reference.lr, reference.scheduler, reference.epochs) == \
        (512, 4, 1e-2, "ReduceLROnPlateau", 100)
    assert (reference.base_width, reference.camera_aug, reference.photometric, reference.cache) == \
        (32, None, False, False)


def test_every_training_option_says_what_it_does():
    import train
    silent = [a.option_strings[0] for a in train.get_args_parser()._actions if a.option_strings and not a.help]
    assert not silent, silent


def test_overwrite_removes_the_old_run_whole_first(tmp_path, synthetic_root, one_epoch_run):
    copy_run(one_epoch_run, "r", tmp_path)
    for folder in ("eval/SYN", "predictions/sub"):   # what evaluate.py and predict.py leave in a run
        (tmp_path / "models" / "r" / folder).mkdir(parents=True)
        (tmp_path / "models" / "r" / folder / "x.png").write_bytes(b"old")
    old_events = sorted((tmp_path / "runs" / "r").iterdir())
    run("train.py", *TINY, "--data-dir", synthetic_root, "--epochs", "1", "--name", "r", "--overwrite", cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "models" / "r").iterdir()) == ["best.pt", "config.json", "last.pt",
                                                                            "log.csv", "split.json"]
    events = sorted((tmp_path / "runs" / "r").iterdir())
    assert len(events) == 1 and events != old_events


@pytest.mark.parametrize("bad, message", [
    (["--crop", "100"], "--crop must be a positive multiple of 16"),
    (["--thicken-labels", "CFD=2"], "--thicken-labels names a dataset that --dataset does not"),
    (["--thicken-labels", "SYNTHETIC"], "is not DATASET=PIXELS"),
    (["--epoch-size", "-1"], "--epoch-size must be >= 0"),
    (["--deep-supervision"], "--deep-supervision needs --arch NestedUNet"),
    (["--panels-every", "0"], "--panels-every must be >= 1"),
    (["--val-every", "0"], "--val-every must be >= 1"),
    (["--val-every", "2"], "ReduceLROnPlateau"),
    (["--val-split", "1"], "--val-split must be in"),
    (["--val-split", "0"], "ReduceLROnPlateau"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--max-minutes", "-1"], "--max-minutes must be > 0"),
    (["--ema", "1"], "--ema must be in"),
    (["--workers", "-1"], "--workers must be >= 0"),
    (["--base-width", "0"], "--base-width must be >= 1"),
    (["--factor", "1"], "--factor must be in"),
])
def test_bad_values_are_refused_at_parse_time(bad, message, capsys):
    import train
    with pytest.raises(SystemExit) as exit_:
        train.get_args(bad)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_bad_crop_exits_2_before_a_run_folder_exists(tmp_path, synthetic_root):
    result = run("train.py", *TINY, "--data-dir", synthetic_root, "--crop", "100", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "multiple of 16" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists()


def test_val_split_zero_trains_on_every_image_and_saves_the_last_epoch_as_best(tmp_path, synthetic_root):
    run("train.py", *TINY, "--data-dir", synthetic_root, "--val-split", "0", "--scheduler", "none", "--epochs", "2",
        "--name", "all", cwd=tmp_path)
    run_dir = tmp_path / "models" / "all"
    split = json.loads((run_dir / "split.json").read_text())
    assert split["SYN"]["val"] == [] and len(split["SYN"]["train"]) == 12
    best, last = (torch.load(run_dir / f, weights_only=True) for f in ("best.pt", "last.pt"))
    assert best["epoch"] == last["epoch"] == 2
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert json.loads((run_dir / "config.json").read_text())["threshold"] == 0.5
    rows = log_rows(run_dir)
    assert len(rows) == 2 and not any(k.startswith("val") for k in rows[0])


def test_val_every_validates_the_first_every_nth_and_the_last_epoch_and_keeps_the_best_of_those(
        tmp_path, synthetic_root):
    run("train.py", *TINY, "--data-dir", synthetic_root, "--scheduler", "CosineAnnealingLR", "--epochs", "5",
        "--val-every", "2", "--name", "sparse", cwd=tmp_path)
    run_dir = tmp_path / "models" / "sparse"
    rows = log_rows(run_dir)
    validated = [int(r["epoch"]) for r in rows if r["val_ods_f1"]]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5] and validated == [1, 2, 4, 5]
    assert all(r["train_loss"] for r in rows)   # the skipped epoch trained and logged under the same header
    config = json.loads((run_dir / "config.json").read_text())
    scores = {int(r["epoch"]): float(r["val_ods_f1"]) for r in rows if r["val_ods_f1"]}
    assert config["best_epoch"] == max(scores, key=lambda e: (scores[e], -e))   # the first of the best


def test_validation_follows_the_first_every_nth_and_the_last_epoch():
    import training
    assert [training.validates_after(e, 3, last=e == 7) for e in range(1, 8)] == [True, False, True, False, False,
                                                                                   True, True]
    assert all(training.validates_after(e, 1, last=False) for e in range(1, 5))


def test_validation_scores_the_maps_predict_makes_tiled_beyond_the_tile_size(tmp_path):
    """Training's validation, evaluate.py and predict.py share predict_probability (tiles over 1024 px)."""
    import inference
    import training
    import trainoptions
    from dataset import CrackDataset, Intensity, Sample
    from engine import make_engine
    from models import build_model
    from synthetic import synthetic_pair
    image, mask = synthetic_pair(np.random.default_rng(0), 64, 1100)
    cv2.imwrite(str(tmp_path / "i.png"), image)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    val_set = CrackDataset([Sample("i", tmp_path / "i.png", tmp_path / "m.png")], Intensity())
    torch.manual_seed(0)
    model = build_model("UNet", base_width=4)
    for module in model.modules():   # BatchNorm statistics of this image: outputs spread over (0, 1)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        model(val_set[0]["image"][None, :, :, :1024])
    model.eval()
    engine = make_engine("cpu", "fp32", False)
    settings = trainoptions.Validation(loss="BCEDiceLoss", scale=1.0, panels_every=1000)
    row, curves = training.validate(model, {"SYN": val_set}, engine, settings, 1, writer=None)
    x, truth = val_set[0]["image"][None], val_set[0]["mask"][None]
    folded = inference.for_inference(copy.deepcopy(model), engine)   # what evaluate.py and predict.py load
    tiled = inference.predict_probability(folded, x, engine)
    with torch.inference_mode():
        one_pass = torch.sigmoid(inference.forward_logits(folded, x, engine))
    assert (tiled - one_pass).abs().max() > 1e-3            # the two paths differ on this image
    loss = compute_loss("BCEDiceLoss", inference.probability_logits(tiled), truth)
    assert row["val_loss"] == pytest.approx(float(loss), abs=1e-6)
    counts = metrics.image_counts(tiled[0, 0].numpy(), truth[0, 0].numpy())[None]
    assert row["val_ods_f1"] == metrics.summarize(counts)["ods"]["f1"]
    tolerant = metrics.image_counts(tiled[0, 0].numpy(), truth[0, 0].numpy(), tolerance=2)[None]
    np.testing.assert_array_equal(curves["SYN"], metrics.f1_curve(tolerant))
    assert row["val_threshold"] == metrics.summarize(tolerant)["ods"]["threshold"]   # one dataset: its 2 px ODS t


def test_cudnn_benchmark_only_where_input_shapes_are_fixed(monkeypatch):
    from engine import make_engine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    make_engine("cuda")                                # evaluate.py, predict.py: a new size per image
    assert torch.backends.cudnn.benchmark is False
    make_engine("cuda", fixed_shapes=True)             # training crops
    assert torch.backends.cudnn.benchmark is True


def test_importing_the_dataset_module_leaves_opencv_threads_alone():
    code = "import cv2; n = cv2.getNumThreads(); import dataset; print(n, cv2.getNumThreads())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    before, after = out.split()
    assert before == after


# ---------------------------------------------------------------- several datasets

def test_several_datasets_train_together_each_with_its_own_split_and_score(tmp_path, synthetic_root):
    from dataset import split_ids
    from synthetic import make_synthetic_dataset
    data = tmp_path / "data"
    shutil.copytree(synthetic_root / "SYN", data / "SYN")
    make_synthetic_dataset(data, "SMALL", count=8, size=(64, 80), seed=3)     # another image size
    # bf16 both ways: validation scores the BatchNorm-folded network evaluate.py loads, so even where
    # folding moves bf16 probabilities across the threshold the two scores are the same number
    common = [*TINY, "--dataset", "SYN", "SMALL", "--data-dir", data, "--epochs", "1", "--sampling", "equal",
              "--precision", "bf16"]
    run("train.py", *common, cwd=tmp_path)
    run_dir = tmp_path / "models" / "SYN-SMALL_UNet"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dataset"] == ["SYN", "SMALL"] and config["sampling"] == "equal"
    split = json.loads((run_dir / "split.json").read_text())
    for name in ("SYN", "SMALL"):
        stems = sorted(p.stem for p in (data / name / "images").iterdir())
        assert (split[name]["train"], split[name]["val"]) == split_ids(stems, 0.25, 0)

    row = log_rows(run_dir)[0]
    per_dataset = [float(row["val_ods_f1_SYN"]), float(row["val_ods_f1_SMALL"])]
    assert float(row["val_ods_f1"]) == pytest.approx(sum(per_dataset) / 2)
    scored = run("evaluate.py", "--name", "SYN-SMALL_UNet", "--test", "SYN", "SMALL", "--tolerance", "0",
                 "--precision", "bf16", cwd=tmp_path)
    for name, logged in zip(("SYN", "SMALL"), per_dataset, strict=True):   # evaluate.py: same split, same score
        val = len(split[name]["val"])
        assert f"{name} is SYN-SMALL_UNet's training set: scoring its {val} validation images only" in scored.stdout
        metrics_json = json.loads((run_dir / "eval" / f"{name}_bf16" / "metrics.json").read_text())
        assert metrics_json["results"][0]["ods"]["f1"] == pytest.approx(logged, abs=1e-12)
        made_by = metrics_json["made_by"]
        assert made_by["precision"] == "bf16" and made_by["device"] == "cpu" and made_by["memory_format"] == \
            "channels_last" and made_by["checkpoint"].endswith("best.pt") and made_by["commit"]


def test_runs_of_one_dataset_written_before_still_load(tmp_path, monkeypatch):
    import rundir
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "old").mkdir(parents=True)
    (tmp_path / "models" / "old" / "config.json").write_text(json.dumps({"dataset": "CFD"}))
    (tmp_path / "models" / "old" / "split.json").write_text(json.dumps(
        {"seed": 0, "val_split": 0.1, "train": ["a", "b"], "val": ["c"]}))
    assert rundir.read_split("old") == {"CFD": {"train": ["a", "b"], "val": ["c"]}}
    assert rundir.run_datasets({"dataset": "CFD"}) == ["CFD"]


@pytest.mark.parametrize("native_bf16", [True, False])
def test_channels_last_only_under_low_precision_autocast(monkeypatch, native_bf16):
    """The bf16 probe decides the precision, and the precision the memory format, in every script
    and in bench_train.py's project arm; --channels-last / --no-channels-last force it."""
    from engine import make_engine
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_train
    monkeypatch.setattr("engine.cpu_has_native_bf16", lambda: native_bf16)
    engine = make_engine("cpu")
    assert engine.dtype == (torch.bfloat16 if native_bf16 else None)
    assert engine.channels_last is native_bf16
    assert engine.describe() == ("cpu bf16 channels_last" if native_bf16 else "cpu fp32 NCHW")
    assert bench_train.project_engine("cpu").channels_last is native_bf16
    assert make_engine("cpu", channels_last=True).channels_last is True
    assert make_engine("cpu", "bf16", channels_last=False).channels_last is False
    assert make_engine("cpu", "fp32").channels_last is False
    for script in ("train", "evaluate", "predict"):
        module = __import__(script)
        parser = module.get_args_parser()
        argv = ["--name", "x", "--test", "X", "photo.jpg"]
        assert parser.parse_known_args(argv)[0].channels_last is None
        assert parser.parse_known_args([*argv, "--no-channels-last"])[0].channels_last is False
