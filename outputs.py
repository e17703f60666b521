"""predict.py's output folders: each run writes into a folder of its own, marked as made by predict.py,
so that nothing a person keeps is overwritten, deleted or read back as an input; and what lies in one:
each photo's files written whole (a temporary name, then renamed) and then its record (RECORDS), from
which the summaries are built, so a run stopped anywhere loses at most the photos in flight and
`--resume OUT` goes on where it stopped.

Default: ./predictions/<run>-<YYYYmmdd-HHMMSS>/. An existing --out is refused unless it is empty
(nothing to lose) or --overwrite is given, which deletes a folder only when it holds the MARKER
(predict.py made it) and no input. The MARKER keeps the settings the maps and masks depend on;
--resume refuses a folder made with others."""
import csv
import io
import json
import os
import shutil
import time
from pathlib import Path

from rundir import REPO_DIR, RunError, json_dump
from visuals import write_image

MARKER = ".crackseg-predictions"   # in every folder predict.py writes; input scans skip folders holding it
RECORDS = ".records"               # one JSON per photo done: its summary row and cracks, written after its files


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


def prepare_out_dir(out_dir: Path, inputs: list[Path], overwrite: bool, settings: dict) -> None:
    """Make `out_dir` ready for a run, marked as predict.py's with the `settings` its outputs depend on;
    refuse (exit 2) before writing anything when it would mix with or delete files that are not a
    previous run's outputs."""
    check_out_dir(out_dir, inputs)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"--out {out_dir} is a file; give a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise RunError(f"--out {out_dir} already exists and is not empty; give a new folder, leave --out out "
                           "(a new ./predictions/<run>-<time>/ each run), --resume it to finish a stopped run, or "
                           "--overwrite to replace a previous run's outputs")
        if not is_marked(out_dir):
            raise RunError(f"--overwrite: {out_dir} has no {MARKER} marker, so predict.py did not make it; "
                           "nothing was deleted. Give a new folder")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_dump(out_dir / MARKER, {"made_by": "predict.py", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "settings": settings})


def check_resume(out_dir: Path, inputs: list[Path], settings: dict) -> None:
    """--resume OUT: a folder predict.py made, with the settings of this run (a different model,
    threshold, scale policy, min-area or mm/px would mix two kinds of outputs in one folder)."""
    check_out_dir(out_dir, inputs)
    if not is_marked(out_dir):
        raise RunError(f"--resume {out_dir}: no {MARKER} marker there, so no predict.py run to go on with")
    made = json.loads((out_dir / MARKER).read_text()).get("settings", {})
    differ = [f"{k} {made.get(k)!r} there, {v!r} now" for k, v in settings.items() if made.get(k) != v]
    if differ:
        raise RunError(f"--resume {out_dir}: its photos were made with other settings ({'; '.join(differ)}); "
                       "resume with those, or give a new --out")


# ---------------------------------------------------------------- one photo's files and record

def write_whole(path: Path, array, quality: int = 90) -> None:
    """An image written under a temporary name, then renamed: a stop leaves it whole or absent."""
    partial = path.with_name(f".partial-{path.name}")
    write_image(partial, array, quality)
    os.replace(partial, path)


def record_path(out_dir: Path, rel: Path) -> Path:
    return out_dir / RECORDS / f"{rel.as_posix()}.json"


def write_record(out_dir: Path, rel: Path, record: dict) -> None:
    """The photo's record, written last: its presence says every file of the photo is whole."""
    path = record_path(out_dir, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    json_dump(path, record)


def read_records(out_dir: Path, rels: list[Path]) -> dict[Path, dict]:
    """{rel: record} of the photos done, in input order."""
    found = {}
    for rel in rels:
        path = record_path(out_dir, rel)
        if path.is_file():
            found[rel] = json.loads(path.read_text())
    return found


def write_text_whole(path: Path, text: str) -> None:
    """A text file under a temporary name of this process, then renamed: two ranks merging at once each
    leave a whole file, never one mixed of both."""
    partial = path.with_name(f".partial-{os.getpid()}-{path.name}")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_tables(out_dir: Path, records: list[dict], columns: tuple[list[str], list[str]]) -> None:
    """summary.csv and cracks.csv of the records (in input order), each written whole."""
    for name, fields, rows in (("summary.csv", columns[0], [r["summary"] for r in records]),
                               ("cracks.csv", columns[1], [c for r in records for c in r["cracks"]])):
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        write_text_whole(out_dir / name, buffer.getvalue())


# ---------------------------------------------------------------- ranks under torchrun

RANKS = ".ranks"   # one JSON per rank of a torchrun run that finished its share


def rank_done(out_dir: Path, rank: int, world: int, photos: int) -> None:
    (out_dir / RANKS).mkdir(exist_ok=True)
    json_dump(out_dir / RANKS / f"{world}-{rank}.json", {"rank": rank, "photos": photos})


def ranks_done(out_dir: Path, world: int) -> dict[int, int] | None:
    """{rank: photos} once every rank of a `world`-process run finished its share, else None."""
    found = {}
    for rank in range(world):
        path = out_dir / RANKS / f"{world}-{rank}.json"
        if not path.is_file():
            return None
        found[rank] = json.loads(path.read_text())["photos"]
    return found


def clear_ranks(out_dir: Path) -> None:
    """Rank 0 before a (resumed) torchrun run: the finish lines of an earlier attempt do not count. Only in
    a folder predict.py marked, and never through a link (rmtree refuses one; the error is ignored)."""
    if not is_marked(out_dir):
        raise RunError(f"{out_dir}: no {MARKER} marker, so predict.py did not make it; nothing was deleted")
    shutil.rmtree(out_dir / RANKS, ignore_errors=True)
