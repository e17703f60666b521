"""A dataset folder crackseg writes (prepare_data.py, synthetic.py): built whole beside its place, then
renamed, and marked, so that only a folder crackseg made is ever replaced, never a user's.
"""
import shutil
from contextlib import contextmanager
from pathlib import Path

from dataset import DatasetError

DATASET_MARKER = ".crackseg-dataset"   # in every dataset folder crackseg writes: only those it may replace


def is_own_dataset(folder: Path) -> bool:
    """True when `folder` holds the marker crackseg writes into every dataset folder it makes."""
    return (folder / DATASET_MARKER).is_file()


def check_replaceable(out: Path) -> None:
    """Refuse (DatasetError, nothing deleted) when `out` holds files crackseg did not write there."""
    if out.is_symlink():
        raise DatasetError(f"{out} is a link to {out.resolve()}; crackseg does not replace what a link points to "
                           "(nothing was deleted): choose another --name")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file, not a dataset folder; choose another --name")
    if out.is_dir() and any(out.iterdir()) and not is_own_dataset(out):
        raise DatasetError(f"{out} was not made by crackseg (no {DATASET_MARKER} marker), so it is not replaced "
                           f"and nothing was deleted; choose another --name, or remove it by hand (rm -r {out}) "
                           "if it is a dataset you no longer need")


@contextmanager
def dataset_folder(out: Path):
    """Yield an empty marked folder with images/ and masks/ to write a dataset into; on success it
    becomes `out`, replacing a folder crackseg made before; on any error or Ctrl-C it is removed, so
    neither half a dataset nor a user's folder is ever left or lost."""
    check_replaceable(out)
    tmp = out.with_name(f".{out.name}.partial")
    check_replaceable(tmp)   # a half-built folder of ours from a crash is marked too
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / DATASET_MARKER).write_text("made by crackseg (prepare_data.py); --overwrite may replace this folder\n")
    for sub in ("images", "masks"):
        (tmp / sub).mkdir()
    try:
        yield tmp
        check_replaceable(out)   # not filled by someone else meanwhile
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
