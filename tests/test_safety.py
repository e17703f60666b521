"""Nothing of the user's is deleted or overwritten: names that reach outside models/, --overwrite,
predict.py's --out, and the GPU check script's bundle export. Each test keeps a sentinel file
outside the folders a command may touch, and checks it survives."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate
import outputs
import predict
import rundir
import train

ROOT = Path(__file__).resolve().parents[1]
BAD_NAMES = ["..", "../x", "/tmp/x", ".hidden", "a/b", "", "x y"]


def run(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def workdir_with_sentinel(tmp_path: Path) -> tuple[Path, Path]:
    """tmp_path/work (models/, inputs/ and a file of the user's) and tmp_path/sentinel.txt beside it."""
    work = tmp_path / "work"
    for folder in ("models/old_run", "runs/old_run", "inputs"):
        (work / folder).mkdir(parents=True)
    (work / "notes.txt").write_text("the user's file")
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("outside")
    return work, sentinel


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("name", ["..", "../x", str(Path("/tmp") / "crackseg_abs")])
def test_train_refuses_a_name_outside_models_and_touches_nothing(tmp_path, name):
    work, sentinel = workdir_with_sentinel(tmp_path)
    before = snapshot(tmp_path)
    result = run("train.py", "--name", name, "--overwrite", "--epochs", "1", cwd=work)
    assert result.returncode == 2 and "not a valid name" in result.stderr and "Traceback" not in result.stderr
    assert "letters, digits" in result.stderr        # the rule is stated
    assert snapshot(tmp_path) == before and sentinel.read_text() == "outside"
    assert not Path("/tmp/crackseg_abs").exists()


@pytest.mark.parametrize("option", ["--name", "--resume", "--init-from", "--dataset", "--thicken-labels"])
@pytest.mark.parametrize("bad", BAD_NAMES)
def test_every_train_name_option_checks_the_rule(option, bad, capsys):
    value = f"{bad}=1" if option == "--thicken-labels" else bad
    with pytest.raises(SystemExit) as exit_:
        train.get_args([option, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and ("not a valid name" in err or "is not DATASET=PIXELS" in err)


@pytest.mark.parametrize("argv", [["--name", "../x", "--test", "SYN"], ["--name", "ok+..", "--test", "SYN"],
                                  ["--name", "ok", "--test", "../SYN"]])
def test_evaluate_checks_run_members_and_test_names(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.get_args_parser().parse_args(argv)
    assert exit_.value.code == 2 and "not a valid name" in capsys.readouterr().err


def test_predict_checks_every_ensemble_member(capsys):
    with pytest.raises(SystemExit) as exit_:
        predict.get_args(["--name", "good+/etc", "photo.jpg"])
    assert exit_.value.code == 2 and "not a valid name" in capsys.readouterr().err
    assert predict.get_args(["--name", "a_1.b-2+c", "photo.jpg"]).name == "a_1.b-2+c"


def test_overwrite_removes_only_the_runs_own_folders(tmp_path, monkeypatch):
    work, sentinel = workdir_with_sentinel(tmp_path)
    monkeypatch.chdir(work)
    (work / "models" / "keep").mkdir()
    rundir.remove_run("old_run")
    assert not (work / "models" / "old_run").exists() and not (work / "runs" / "old_run").exists()
    assert (work / "models" / "keep").is_dir() and (work / "notes.txt").exists() and sentinel.exists()


def test_overwrite_refuses_a_run_folder_that_is_a_link_outside(tmp_path, monkeypatch):
    work, sentinel = workdir_with_sentinel(tmp_path)
    monkeypatch.chdir(work)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.txt").write_text("precious")
    (work / "models" / "linked").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(rundir.RunError, match="refusing to remove"):
        rundir.remove_run("linked")
    with pytest.raises(rundir.RunError, match="refusing to remove"):
        rundir.remove_run("..")
    assert (elsewhere / "data.txt").read_text() == "precious" and sentinel.exists()


@pytest.mark.parametrize("where", ["the input folder", "its parent", "the working directory", "the home directory",
                                   "the repository"])
def test_predict_refuses_an_out_that_holds_inputs_or_the_users_folders(tmp_path, monkeypatch, where):
    work, sentinel = workdir_with_sentinel(tmp_path)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    photos = work / "site" / "photos"
    photos.mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"x")
    out = {"the input folder": photos, "its parent": work / "site", "the working directory": work,
           "the home directory": tmp_path / "home", "the repository": ROOT}[where]
    with pytest.raises(rundir.RunError, match="is or contains"):
        outputs.check_out_dir(out, [photos])
    items = predict.find_inputs([str(photos / "a.jpg")], out.resolve())
    with pytest.raises(rundir.RunError, match="is or contains"):
        outputs.check_out_dir(out, [image for image, _ in items])
    items = predict.find_inputs([str(photos)], (work / "predictions").resolve())
    outputs.check_out_dir(work / "predictions", [photos, *(image for image, _ in items)])   # a folder of its own
    outputs.check_out_dir(photos / "cracks", [photos])      # inside an input folder: marked, so skipped by scans


def test_predict_with_a_bad_out_exits_2_and_writes_nothing(tmp_path):
    work, sentinel = workdir_with_sentinel(tmp_path)
    photos = work / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"x")
    before = snapshot(tmp_path)
    result = run("predict.py", str(photos), "--out", str(photos), cwd=work)
    assert result.returncode == 2 and "is or contains the input" in result.stderr, result.stderr
    assert snapshot(tmp_path) == before


def copy_of_repository(dest: Path) -> Path:
    """The checkout's tracked and untracked-but-kept files, as `git ls-files` lists them."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes((ROOT / rel).read_bytes())
    return dest


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def gpu_check(repo: Path, out: Path, *mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CRACKSEG_CHECK_DEVICE": "cpu"}
    return subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh"), str(out), *mode], cwd=out.parent,
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout to copy")
def test_gpu_check_transfer_never_writes_the_real_bundle(tmp_path):
    repo = copy_of_repository(tmp_path / "repo")
    bundle = digests(repo / "pretrained")
    result = gpu_check(repo, tmp_path / "out", "transfer")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "transfer check done" in result.stdout and "max |dp|" in result.stdout
    assert digests(repo / "pretrained") == bundle                   # byte-identical, nothing added
    assert not (repo / "models").exists() and not (repo / "inputs" / "SYNTHETIC").exists()


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout to copy")
def test_gpu_check_stops_at_the_first_failing_step(tmp_path):
    repo = copy_of_repository(tmp_path / "repo")
    (repo / "benchmarks" / "bench_train.py").write_text("raise SystemExit(3)\n")
    result = gpu_check(repo, tmp_path / "out")
    assert result.returncode == 3 and "check done" not in result.stdout
    assert "synthetic" not in result.stdout                          # the steps after it never ran
