"""What every experiment script shares: running, recording and rendering, and the definitions that
several of them use (sources, the recipe, budgets, run names), written once here so that no script
imports another.

An experiment is a list of commands (train.py, then evaluate.py) run from the repository root
exactly as a user runs them. When all of its commands have finished, ONE line goes to a
committed jsonl file (experiment, commands, commit, training summary, every metrics.json it
made); with --commit that file is committed at once, so a session that ends or a fresh machine
loses nothing (without it the line is only appended: committing is the caller's choice).
Tables are rendered from the jsonl alone, never from models/; experiments already in the file
are skipped. Never run two at once: budgets are wall-clock.
"""
import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
RESULTS = ROOT / "benchmarks" / "results"   # every experiment's jsonl record
DATA_DIR = "../shared/data"                  # where the labelled sources live on the development machines

# ---------------------------------------------------------------- shared definitions

# The four labelled sources: what a run trains on, and what it is scored on when the source is held out.
TRAIN = {"DEEPCRACK": "DEEPCRACK_TRAIN", "CFD": "CFD", "CRACKMAP": "CRACKMAP", "MASONRY": "MASONRY"}
TEST = {"DEEPCRACK": "DEEPCRACK_TEST", "CFD": "CFD", "CRACKMAP": "CRACKMAP", "MASONRY": "MASONRY"}
MINUTES, ABLATION_MINUTES, BUNDLE_MINUTES = 25, 12, 120   # leave-one-out runs, 12-minute arms, the bundle
ABLATION_SOURCES = ["CRACKMAP", "MASONRY"]                # held out by the 12-minute arms
# generalization.py's experiments trained twice, seeds 0 and 1: the spread every comparison is judged by
SEED_PAIRS = [("base_dc", "base_dc_seed1"), ("all4", "all4_seed1"),
              ("camera_allcam_CRACKMAP", "camera_allcam_seed1_CRACKMAP")]


def recipe_parts() -> tuple[list[str], ...]:
    """train.py's `--preset recipe` as the flags the experiments vary separately: the optimisation and
    augmentation recipe, the camera augmentation, the shipped network and the upsampling adopted since
    (trainoptions.py defines them; experiments recorded before UPSAMPLING keep their commands without it)."""
    sys.path.insert(0, str(ROOT))
    from trainoptions import RECIPE_BASE, RECIPE_CAMERA, RECIPE_NETWORK, RECIPE_UPSAMPLING
    return list(RECIPE_BASE), list(RECIPE_CAMERA), list(RECIPE_NETWORK), list(RECIPE_UPSAMPLING)


RECIPE, CAMERA, SHIPPED_NETWORK, UPSAMPLING = recipe_parts()
SHIPPED = "UNet:" + SHIPPED_NETWORK[-1]   # the bundle's network, as architecture.py names its candidates
REFERENCE = "UNet:32"                     # the width-32 UNet of generalization.py's lodo_S runs


# The ten sources as leave-one-group-out holds them out: what a run without the group trains on, and
# what the group is scored on (the drone's three optical zooms are one road, held out together).
GROUP_TRAIN = {**{s: [TRAIN[s]] for s in TRAIN}, "UAVCRACKX": ["UAVCRACKX4", "UAVCRACKX8", "UAVCRACKX16"],
               "GAPS384": ["GAPS384"], "AIGLERN": ["AIGLERN"], "SHADOWCRACK": ["SHADOWCRACK"]}
GROUP_TEST = {**{s: [TEST[s]] for s in TEST}, **{g: GROUP_TRAIN[g] for g in GROUP_TRAIN if g not in TEST}}


def other_groups(group: str) -> list[str]:
    """The training sets of a run without `group`, every other group's, in GROUP_TRAIN's order."""
    return [d for g, sets in GROUP_TRAIN.items() if g != group for d in sets]


def steps_recipe(steps: int, epoch_size: int, batch: int) -> list[str]:
    """RECIPE with a budget of `steps` optimizer steps: epochs of `epoch_size` crops in batches of `batch`
    (equal steps on every machine, where a wall-clock budget fits fewer on a CPU without native bf16)."""
    recipe = list(RECIPE)
    recipe[recipe.index("--epochs") + 1] = str(steps * batch // epoch_size)
    recipe[recipe.index("--batch-size") + 1] = str(batch)
    recipe.insert(recipe.index("--epochs") + 2, "--epoch-size")
    recipe.insert(recipe.index("--epoch-size") + 1, str(epoch_size))
    return recipe


def others(source: str) -> list[str]:
    """The training sets of a leave-one-out run without `source`."""
    return [TRAIN[s] for s in TRAIN if s != source]


def experiment(train_sets: list[str], tests: list[str], extra: list[str], minutes: int) -> dict:
    return {"train": train_sets, "tests": tests, "extra": extra, "minutes": minutes}


def lodo(source: str, extra: list[str], minutes: int = MINUTES) -> dict:
    """Trained on the three other sources with the recipe plus `extra`, scored on all of `source`."""
    return experiment(others(source), [TEST[source]], extra, minutes)


def network_args(candidate: str) -> list[str]:
    """train.py options of a network named ARCH:WIDTH beyond the recipe (none for the reference)."""
    return [] if candidate == REFERENCE else ["--base-width", candidate.split(":")[1]]


def shipped_lodo(source: str, minutes: int = MINUTES) -> dict:
    """The shipped network's leave-one-out experiment without `source` (architecture.py's, by default)."""
    return lodo(source, CAMERA + network_args(SHIPPED), minutes)


def arch_experiment(candidate: str, source: str) -> str:
    """architecture.py's experiment name of a candidate held out from `source`."""
    arch, width = candidate.split(":")
    return f"{arch.lower()}_w{width}_{source}"


def lodo_run(candidate: str, source: str) -> str:
    """The run of `candidate` trained without `source`: generalization.py's own for the reference network,
    architecture.py's otherwise."""
    if candidate == REFERENCE:
        return f"gen_lodo_{source}"
    return "arch_" + arch_experiment(candidate, source)


def long_parent_name(source: str) -> str:
    """finetune.py's experiment: the shipped network without `source`, trained for the bundle's budget."""
    return f"parent_long_{source}"


def lodo_commands(args, e: dict, run: str) -> list[list[str]]:
    """train.py then evaluate.py of a train/test experiment `e`, as run `run`."""
    train = [sys.executable, "train.py", "--dataset", *e["train"], "--data-dir", args.data_dir, "--name", run,
             "--overwrite", "--max-minutes", str(e["minutes"]), *RECIPE, *e["extra"]]
    evaluate = [sys.executable, "evaluate.py", "--name", run, "--test", *e["tests"], "--data-dir", args.data_dir,
                "--tolerance", "0", "2"]
    return [train, evaluate]


def lodo_summary(e: dict, run: str) -> dict:
    return {"trained_on": e["train"], "budget_minutes": e["minutes"], "extra": e["extra"],
            "training": training_summary(run), "metrics": eval_results(run)}


def add_common_args(p: argparse.ArgumentParser, record: Path, choices: list[str]) -> None:
    p.add_argument("--only", nargs="+", choices=choices, metavar="NAME", help="experiments to run (default: all)")
    p.add_argument("--list", action="store_true", help="print each experiment's shell commands and exit")
    p.add_argument("--table-only", action="store_true", help="render the table from --record and exit")
    p.add_argument("--rerun", action="store_true", help="run experiments even if --record has them")
    p.add_argument("--record", type=Path, default=record, help="the jsonl file of finished experiments")
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--commit", action="store_true",
                   help="git-commit --record after each finished experiment (the recording commands pass it)")


def shell(cmd: list[str]) -> str:
    return " ".join(shlex.quote(str(part)) for part in ["python", *cmd[1:]])


def git(*args: str, cwd: Path = ROOT) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def code_version() -> str:
    """The commit the commands ran at, marked -dirty when tracked code differed from it."""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def read_record(path: Path) -> dict[str, dict]:
    """Finished experiments by name (a later line of the same name replaces an earlier one)."""
    if not path.exists():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {line["experiment"]: line for line in lines}


def append_record(path: Path, line: dict, commit: bool) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
    if commit:
        commit_record(path, line)


def commit_record(path: Path, line: dict) -> None:
    """Commit `path`, the line's "attachments" (paths relative to the record's folder: arrays a line refers
    to) and the tables rendered from the grown record (render_docs.py --stage), nothing else: built in a
    scratch index, so what is staged or being written in the checkout holding the record stays out."""
    repo = Path(git("rev-parse", "--show-toplevel", cwd=path.parent) or path.parent)
    files = [path, *(path.parent / a for a in line.get("attachments", []))]
    rel = [str(f.resolve().relative_to(repo.resolve())) for f in files]
    message = f"{path.name}: {line['experiment']} ({line['commit']})"
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(scratch) / "index")}
        for _ in range(5):   # another git command may hold HEAD's lock, or have moved HEAD, meanwhile
            if committed_with_tables(repo, rel, message, env):
                return
            time.sleep(2)
    print(f"warning: could not commit {path}; commit it and run benchmarks/render_docs.py by hand", file=sys.stderr)


def committed_with_tables(repo: Path, rel: list[str], message: str, env: dict) -> bool:
    """One try: the commit is built on the HEAD it read and lands only if HEAD is still that commit, so a
    commit made in the checkout while the tables rendered (a minute or more) is never undone."""
    def ok(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    head = ok("git", "rev-parse", "HEAD").stdout.strip()
    if not head or ok("git", "read-tree", head).returncode or ok("git", "add", *rel).returncode:
        return False
    tables = ok(sys.executable, "benchmarks/render_docs.py", "--stage")
    if tables.returncode:   # the record matters more than its tables: commit it, say what is left to do
        print(f"warning: tables not re-rendered: {tables.stderr[-500:]}", file=sys.stderr)
    tree = ok("git", "write-tree").stdout.strip()
    new = ok("git", "commit-tree", tree, "-p", head, "-m", message).stdout.strip() if tree else ""
    if not new or ok("git", "update-ref", "-m", f"commit: {message}", "HEAD", new, head).returncode:
        return False   # HEAD moved meanwhile: the caller tries again on the new HEAD
    # the checkout's own index learns the new commit's version of what it carried
    carried = [*rel, *(tables.stdout.split() if not tables.returncode else [])]
    subprocess.run(["git", "reset", "-q", "--", *carried], cwd=repo, capture_output=True)
    return True


def training_summary(run: str) -> dict:
    """What the table shows of a training run: epochs fitted, best epoch, final validation loss, threshold,
    and the validation F curves the threshold was chosen from."""
    run_dir = MODELS / run
    with open(run_dir / "log.csv") as f:
        log = list(csv.DictReader(f))
    config = json.loads((run_dir / "config.json").read_text())
    last = log[-1]
    return {"epochs": len(log), "best_epoch": config.get("best_epoch"), "threshold": config.get("threshold"),
            "val_f1_curves": config.get("val_f1_curves"),   # per training dataset: other threshold rules, offline
            "final_val_loss": float(last["val_loss"]) if last.get("val_loss") else None,
            "final_val_ods_f1": float(last["val_ods_f1"]) if last.get("val_ods_f1") else None}


def finished_training(cmd: list[str], expected: dict | None = None) -> bool:
    """A train.py command whose run finished every planned epoch with its datasets and epoch size (and the
    config values `expected`): a queue trained it before its line could be recorded, so run_all's skip
    passes it rather than train the same steps again."""
    if cmd[1] != "train.py":
        return False
    run = cmd[cmd.index("--name") + 1]
    try:
        config, epochs = json.loads((MODELS / run / "config.json").read_text()), training_summary(run)["epochs"]
    except (OSError, ValueError, KeyError):
        return False
    value = {flag: cmd[cmd.index(flag) + 1] for flag in ("--epochs", "--epoch-size") if flag in cmd}
    planned = {"epochs": int(value["--epochs"]), "epoch_size": int(value.get("--epoch-size", 0)),
               "dataset": cmd[cmd.index("--dataset") + 1:cmd.index("--data-dir")], **(expected or {})}
    return epochs == planned["epochs"] and all(config.get(k) == v for k, v in planned.items())


def eval_results(run: str) -> dict:
    """Every metrics.json under models/RUN/eval/, by folder (DATASET or DATASET_tta)."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((MODELS / run / "eval").glob("*/metrics.json"))}


def run_all(experiments: dict[str, list[list[str]]], args, summarize, skip=None) -> None:
    """Run the chosen experiments not yet in the record; summarize(name) -> the line's results. A command
    for which skip(cmd) is true has already run (a training the record's line then reuses)."""
    names = args.only or list(experiments)
    if args.list:
        for name in names:
            print(name, *(shell(cmd) for cmd in experiments[name]), sep="\n  ")
        return
    done = {name for name, line in read_record(args.record).items() if not line.get("before_fixes")}
    for name in names:
        if name in done and not args.rerun:
            print(f"skip {name}: in {args.record}")
            continue
        started, commit = time.time(), code_version()
        for cmd in experiments[name]:
            if skip is not None and skip(cmd):
                print("# done already:", shell(cmd), flush=True)
                continue
            print("$", shell(cmd), flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
        line = {"experiment": name, "commands": [shell(cmd) for cmd in experiments[name]], "commit": commit,
                "date": time.strftime("%Y-%m-%d %H:%M"), "wall_minutes": round((time.time() - started) / 60, 1),
                "machine": machine(),
                **summarize(name)}
        append_record(args.record, line, args.commit)
        print(f"recorded {name} in {args.record}", flush=True)


def machine() -> str:
    """The CPU kind a wall-clock number depends on: bf16 autocast is about 3x faster where it is native."""
    from engine import cpu_has_native_bf16
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{platform.machine()} {cpu_count()} cores, {bf16}"


def cpu_count() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def score(metrics: dict | None, tolerance: int) -> dict | None:
    """One tolerance's entry of a metrics.json, or None."""
    if not metrics:
        return None
    return next((r for r in metrics["results"] if r["tolerance"] == tolerance), None)


def f1_pair(line: dict, test: str, tolerance: int) -> tuple[float, float] | None:
    """(ODS F, F at the run's threshold) of a finished experiment on one test set, or None."""
    r = score(line["metrics"].get(test), tolerance)
    return (r["ods"]["f1"], r["at_run_threshold"]["f1"]) if r else None


def cell(metrics: dict | None, tolerance: int, threshold: bool = False, at_run: bool = False) -> str:
    """'ODS [(t)] / OIS / AP [/ F at the run's threshold]' of one tolerance, or '-'."""
    r = score(metrics, tolerance)
    if r is None:
        return "-"
    ods = f"{r['ods']['f1']:.3f}" + (f" ({r['ods']['threshold']:.2f})" if threshold else "")
    text = f"{ods} / {r['ois']['f1']:.3f} / {r['ap']:.3f}"
    if at_run:
        run = r.get("at_run_threshold")
        text += f" / {run['f1']:.3f}" if run else " / -"
    return text


def two_px(line: dict | None) -> tuple[float, float] | None:
    """(ODS F, F at the run's threshold) at 2 px of a line's one held-out source."""
    if not line:
        return None
    r = score(next(iter(line["metrics"].values())), 2)
    return r["ods"]["f1"], r["at_run_threshold"]["f1"]


def parameters(arch: str, width: int) -> int:
    sys.path.insert(0, str(ROOT))
    from models import build_model, count_parameters
    return count_parameters(build_model(arch, base_width=width))
