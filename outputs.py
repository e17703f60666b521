"""predict.py's output folders: each run writes into a folder of its own, marked as made by predict.py,
so that nothing a person keeps is overwritten, deleted or read back as an input.

Default: ./predictions/<run>-<YYYYmmdd-HHMMSS>/. An existing --out is refused unless it is empty
(nothing to lose) or --overwrite is given, which deletes a folder only when it holds the MARKER
(predict.py made it) and no input."""
import json
import shutil
import time
from pathlib import Path

from rundir import REPO_DIR, RunError

MARKER = ".crackseg-predictions"   # in every folder predict.py writes; input scans skip folders holding it


def default_out(run: str) -> Path:
    """./predictions/<run>-<YYYYmmdd-HHMMSS>/ (an ensemble RUN1+RUN2 keeps its name), new even when two
    runs start in the same second."""
    stem = Path("predictions") / f"{run.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = stem, 2
    while out.exists():
        out, n = stem.with_name(f"{stem.name}-{n}"), n + 1
    return out


def is_marked(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def protected_paths(inputs: list[Path]) -> list[tuple[str, Path]]:
    """What an output folder must never be or contain: the inputs, the working directory, the repository
    and the home directory."""
    return [("the working directory", Path.cwd()), ("the repository", REPO_DIR), ("the home directory", Path.home()),
            *((f"the input {p}", p) for p in inputs)]


def check_out_dir(out_dir: Path, inputs: list[Path]) -> None:
    """--out may be any folder except one that is, or holds, an input, the working directory, the
    repository or the home directory: outputs written there would land among the user's own files."""
    out = out_dir.resolve()
    for what, path in protected_paths(inputs):
        if path.resolve().is_relative_to(out):
            raise RunError(f"--out {out_dir} is or contains {what}; give a new folder of its own "
                           "(or leave --out out: ./predictions/<run>-<time>/)")


def prepare_out_dir(out_dir: Path, inputs: list[Path], overwrite: bool) -> None:
    """Make `out_dir` ready for a run, marked as predict.py's; refuse (exit 2) before writing anything
    when it would mix with or delete files that are not a previous run's outputs."""
    check_out_dir(out_dir, inputs)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"--out {out_dir} is a file; give a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise RunError(f"--out {out_dir} already exists and is not empty; give a new folder, leave --out out "
                           "(a new ./predictions/<run>-<time>/ each run), or --overwrite to replace a previous "
                           "run's outputs")
        if not is_marked(out_dir):
            raise RunError(f"--overwrite: {out_dir} has no {MARKER} marker, so predict.py did not make it; "
                           "nothing was deleted. Give a new folder")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text(json.dumps({"made_by": "predict.py", "started": time.strftime("%Y-%m-%d %H:%M:%S")})
                                  + "\n")
