"""Behaviour frozen before the layout moved (issue "A house a newcomer can walk"): every benchmark's
--list, every entry script's options, evaluate.py's output files and the keys of config.json and
metrics.json, compared against tests/snapshots/. A deliberate change regenerates them:

    python tests/test_behaviour.py --write
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
LISTED = ["accuracy", "architecture", "finetune", "general_model", "generalization", "loss_align", "zoom"]
ENTRY_SCRIPTS = ["train", "evaluate", "predict", "prepare_data", "export", "accuracy", "architecture", "bench_metrics",
                 "bench_predict", "bench_train", "finetune", "folder_thresholds", "general_model", "generalization",
                 "label_widths", "loss_align", "photometric", "report_screenshot", "threshold_rules", "zoom"]


def script(name: str) -> Path:
    """Where an entry script lives now (the top level, benchmarks/ or one folder below it)."""
    found = [ROOT / f"{name}.py", *sorted((ROOT / "benchmarks").glob(f"**/{name}.py"))]
    return next(p for p in found if p.is_file())


def python(*args, cwd: Path = ROOT) -> str:
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


# One interpreter runs every script's --help and --list (torch is imported once, not 23 times):
# each script runs as __main__ with its own argv, and its printed output is kept.
OUTPUTS = """
import contextlib, io, json, runpy, sys
found = {}
for key, path, flag in json.loads(sys.argv[1]):
    out = io.StringIO()
    sys.argv = [path, flag]
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit:
            pass
    found[key] = out.getvalue()
print(json.dumps(found))
"""


def script_outputs() -> dict[str, str]:
    jobs = [[f"help:{name}", str(script(name)), "--help"] for name in ENTRY_SCRIPTS]
    jobs += [[f"list:{name}", str(script(name)), "--list"] for name in LISTED]
    return json.loads(python("-c", OUTPUTS, json.dumps(jobs)))


def options(help_text: str) -> list[str]:
    """The option flags of a script's usage line, sorted (help texts may change, flags may not)."""
    usage = help_text.split("\n\n")[0]
    return sorted(set(re.findall(r"--[a-z][a-z0-9-]*", usage)))


def key_paths(obj, prefix: str = "") -> list[str]:
    """Every key of a JSON object as a dotted path; list items are described by their first element."""
    paths = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            paths += [prefix + key] + key_paths(value, prefix + key + ".")
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        paths += key_paths(obj[0], prefix + "[].")
    return sorted(set(paths))


def run_layout(work: Path, data_root: Path) -> dict:
    """A tiny run trained and evaluated: the files it leaves and the keys of its JSON files."""
    common = ["--dataset", "SYN", "--data-dir", data_root, "--crop", "64", "--batch-size", "4", "--base-width", "4",
              "--workers", "0", "--val-split", "0.25", "--epochs", "1", "--name", "snap"]
    python(ROOT / "train.py", *common, cwd=work)
    python(ROOT / "evaluate.py", "--name", "snap", "--test", "SYN", "--tolerance", "0", "2", "--save-images", cwd=work)
    run_dir = work / "models" / "snap"
    stem_free = r"^eval/SYN/[^/]*?_(prob\.png|panel\.jpg)$"   # one name per kind of file, whatever the stems
    files = sorted(re.sub(stem_free, r"eval/SYN/<stem>_\1", str(p.relative_to(run_dir)))
                   for p in run_dir.rglob("*") if p.is_file())
    return {"files": sorted(set(files)),
            "config_keys": key_paths(json.loads((run_dir / "config.json").read_text())),
            "metrics_keys": key_paths(json.loads((run_dir / "eval" / "SYN" / "metrics.json").read_text())),
            "per_image_columns": (run_dir / "eval" / "SYN" / "per_image.csv").read_text().splitlines()[0].split(",")}


def current(tmp: Path, data_root: Path) -> dict:
    outputs = script_outputs()
    return {"list": {name: outputs[f"list:{name}"] for name in LISTED},
            "options": {name: options(outputs[f"help:{name}"]) for name in ENTRY_SCRIPTS},
            "run": run_layout(tmp, data_root)}


def saved() -> dict:
    return {"list": {name: (SNAPSHOTS / f"list_{name}.txt").read_text() for name in LISTED},
            "options": json.loads((SNAPSHOTS / "options.json").read_text()),
            "run": json.loads((SNAPSHOTS / "run_layout.json").read_text())}


def write(snapshot: dict) -> None:
    SNAPSHOTS.mkdir(exist_ok=True)
    for name, text in snapshot["list"].items():
        (SNAPSHOTS / f"list_{name}.txt").write_text(text)
    (SNAPSHOTS / "options.json").write_text(json.dumps(snapshot["options"], indent=1) + "\n")
    (SNAPSHOTS / "run_layout.json").write_text(json.dumps(snapshot["run"], indent=1) + "\n")


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, synthetic_root) -> dict:
    return current(tmp_path_factory.mktemp("snapshot"), synthetic_root)


@pytest.mark.parametrize("name", LISTED)
def test_every_benchmark_lists_the_same_commands(snapshot, name):
    assert snapshot["list"][name] == saved()["list"][name]


@pytest.mark.parametrize("name", ENTRY_SCRIPTS)
def test_every_entry_script_keeps_its_options(snapshot, name):
    assert snapshot["options"][name] == saved()["options"][name]


def test_a_run_and_its_evaluation_leave_the_same_files_and_keys(snapshot):
    assert snapshot["run"] == saved()["run"]


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile
    sys.path.insert(0, str(ROOT))
    from synthetic import make_synthetic_dataset
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_dataset(Path(tmp) / "data", "SYN", count=12, size=(96, 128), seed=1)
        (Path(tmp) / "work").mkdir()
        write(current(Path(tmp) / "work", Path(tmp) / "data"))
    print(f"wrote {SNAPSHOTS}")
