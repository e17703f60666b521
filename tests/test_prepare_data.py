"""prepare_data.py and synthetic.py: the synthetic generator and the importer on miniature archives of each layout."""
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import prepare_data
from prepare_data import main
from synthetic import make_synthetic_dataset, synthetic_pair
from utils import run_cli

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------- synthetic generator

def test_synthetic_pair_shapes_and_crack_fraction():
    rng = np.random.default_rng(3)
    for height, width in ((96, 128), (128, 96)):
        image, mask = synthetic_pair(rng, height, width)
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        assert 0.01 <= np.mean(mask > 0) <= 0.06


def test_synthetic_dataset_deterministic_exact_and_darker(tmp_path):
    first = make_synthetic_dataset(tmp_path / "a", count=6, size=(96, 96), seed=5)
    again = make_synthetic_dataset(tmp_path / "b", count=6, size=(96, 96), seed=5)
    other = make_synthetic_dataset(tmp_path / "c", count=6, size=(96, 96), seed=6)
    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*.*") if p.parent != first)
    assert (first / ".crackseg-dataset").is_file()
    assert names[:2] == ["images/syn_000.jpg", "images/syn_001.jpg"] and len(names) == 12
    for name in names:
        assert (first / name).read_bytes() == (again / name).read_bytes()
    assert (first / "images/syn_000.jpg").read_bytes() != (other / "images/syn_000.jpg").read_bytes()
    for stem in (f"syn_{i:03d}" for i in range(6)):
        mask = cv2.imread(str(first / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        gray = cv2.imread(str(first / "images" / f"{stem}.jpg"), cv2.IMREAD_GRAYSCALE).astype(float)
        assert mask.ndim == 2 and set(np.unique(mask)) == {0, 255}
        assert gray[mask > 0].mean() < gray[mask == 0].mean() - 10


def test_synthetic_cli_refuses_filled_folder(tmp_path, capsys):
    args = ["--synthetic", "--name", "S", "--data-dir", str(tmp_path), "--count", "2", "--size", "64", "80"]
    assert main(args) == 0
    assert cv2.imread(str(tmp_path / "S/images/syn_000.jpg")).shape == (64, 80, 3)
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


# ---------------------------------------------------------------- miniature archives

def _crack(seed: int, size=(24, 32)) -> np.ndarray:
    """bool crack mask: one random line, so each stem's mask is different."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(size, np.uint8)
    cv2.line(mask, (0, int(rng.integers(size[0]))), (size[1] - 1, int(rng.integers(size[0]))), 1, 2)
    return mask > 0


def _put(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _photo(path: Path, seed: int, size=(24, 32)) -> None:
    _put(path, np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def _layout(src: Path, image_glob: str, mask_glob: str, stems, encode=lambda m: m.astype(np.uint8) * 255):
    """Write image_glob/mask_glob ('dir/*.ext') for each stem; return the expected masks."""
    expected = {}
    for i, stem in enumerate(stems):
        _photo(src / image_glob.replace("*", stem), i)
        expected[stem] = _crack(i)
        _put(src / mask_glob.replace("*", stem), encode(expected[stem]))
    return expected


def _bgr(mask):  # 24-bit BMP ground truth: three equal channels
    return np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _check(dataset: Path, expected: dict, rois: dict | None = None) -> None:
    assert sorted(p.stem for p in (dataset / "images").iterdir()) == sorted(expected)
    for stem, crack in expected.items():
        mask = cv2.imread(str(dataset / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.ndim == 2 and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask > 0, crack), stem
    for stem, roi in (rois or {}).items():
        assert np.array_equal(cv2.imread(str(dataset / "rois" / f"{stem}.png"), cv2.IMREAD_UNCHANGED), roi)


def _import(src: Path, out: Path, *extra) -> int:
    before = _tree_digest(src)
    code = main(["--from", str(src), "--name", "X", "--data-dir", str(out), *extra])
    assert _tree_digest(src) == before, "SRC was modified"
    return code


@pytest.mark.parametrize("image_glob, mask_glob, encode", [
    ("CrackTree260_img/*.jpg", "CrackTree260_gt/gt/*.bmp", _bgr),
    ("CRKWH100_img/*.png", "CRKWH100_gt/*.bmp", _bgr),
    ("CrackLS315_img/*.jpg", "CrackLS315_gt/*.bmp", lambda m: m.astype(np.uint8) * 255),
    ("flat/*.jpg", "flat/*.bmp", lambda m: m.astype(np.uint8) * 255),       # one folder, both kinds
    ("images/*.jpg", "masks/*.png", lambda m: m.astype(np.uint8)),          # {0,1} masks: > 0
    ("images/*.png", "masks/*.png", lambda m: m.astype(np.uint8) * 200),    # 0/200: > 127
])
def test_import_paired_layouts(tmp_path, capsys, image_glob, mask_glob, encode):
    expected = _layout(tmp_path / "src", image_glob, mask_glob, ["a", "b-1", "c_2"], encode)
    _photo(tmp_path / "src" / image_glob.replace("*", "lonely"), 9)
    assert _import(tmp_path / "src", tmp_path / "out") == 0
    _check(tmp_path / "out" / "X", expected)
    out = capsys.readouterr().out
    assert "image without mask" in out and "lonely" in out


def test_import_stone331_rois(tmp_path):
    src = tmp_path / "Stone331"
    expected = _layout(src, "Stone331_img/*.jpg", "Stone331_gt/*.bmp", ["s1", "s2"])
    rois = {stem: np.where(_crack(7 + i), 0, 255).astype(np.uint8) for i, stem in enumerate(expected)}
    for stem, roi in rois.items():
        _put(src / "Stone331_mask" / f"{stem}.png", roi)
    assert _import(src, tmp_path / "out") == 0
    _check(tmp_path / "out" / "X", expected, rois)


def test_import_crack500_with_and_without_lists(tmp_path, capsys):
    src = tmp_path / "CRACK500"
    train = _layout(src, "traincrop/*.jpg", "traincrop/*.png", ["t1", "t2"])
    val = _layout(src, "valcrop/*.jpg", "valcrop/*.png", ["v1"])
    test = _layout(src, "testcrop/*.jpg", "testcrop/*.png", ["u1"])
    assert _import(src, tmp_path / "plain") == 0
    _check(tmp_path / "plain" / "X", {**train, **val, **test})
    (src / "train.txt").write_text("traincrop/t1.jpg traincrop/t1.png\ntraincrop/t2.jpg traincrop/t2.png\n")
    (src / "val.txt").write_text("valcrop/v1.jpg valcrop/v1.png\nvalcrop/gone.jpg valcrop/gone.png\n")
    (src / "test.txt").write_text("testcrop/u1.jpg testcrop/u1.png\n\n")
    assert _import(src, tmp_path / "listed") == 0
    _check(tmp_path / "listed" / "X_TRAIN", train)
    _check(tmp_path / "listed" / "X_VAL", val)
    _check(tmp_path / "listed" / "X_TEST", test)
    assert "val.txt:2: missing file" in capsys.readouterr().out
    assert not (tmp_path / "listed" / "X").exists()


def test_import_deepcrack_keeps_splits_apart(tmp_path):
    src = tmp_path / "DeepCrack"
    train = _layout(src, "train_img/*.jpg", "train_lab/*.png", ["11289-1", "7Q3A9060-1"])
    test = {"11289-1": _crack(42)}  # same stem as in train, different pixels
    _photo(src / "test_img/11289-1.jpg", 42)
    _put(src / "test_lab/11289-1.png", test["11289-1"].astype(np.uint8))  # a 1-bit style mask
    assert _import(src, tmp_path / "out") == 0
    _check(tmp_path / "out" / "X_TRAIN", train)
    _check(tmp_path / "out" / "X_TEST", test)


def test_import_crackforest_mat_label3_is_not_crack(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    src = tmp_path / "CrackForest"
    labels = np.ones((24, 32), np.uint8)
    labels[5:7, :] = 2      # crack
    labels[10:20, 4:9] = 3  # background enclosed by cracks
    _photo(src / "image" / "001.jpg", 0)
    (src / "groundTruth").mkdir()
    savemat(str(src / "groundTruth" / "001.mat"), {"groundTruth": {"Segmentation": labels, "Boundaries": labels > 1}})
    assert _import(src, tmp_path / "out") == 0
    _check(tmp_path / "out" / "X", {"001": labels == 2})


@pytest.mark.skipif(not (SHARED / "_raw/CrackForest").is_dir() or not (SHARED / "CFD/masks").is_dir(),
                    reason="shared CrackForest data not present")
def test_import_real_crackforest_reproduces_cfd(tmp_path):
    assert main(["--from", str(SHARED / "_raw/CrackForest"), "--name", "CFD", "--data-dir", str(tmp_path)]) == 0
    reference = sorted((SHARED / "CFD/masks").iterdir())
    assert sorted(p.name for p in (tmp_path / "CFD/masks").iterdir()) == [p.name for p in reference]
    for ref in reference:
        ours = cv2.imread(str(tmp_path / "CFD/masks" / ref.name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(ours, cv2.imread(str(ref), cv2.IMREAD_UNCHANGED)), ref.name


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("files, words", [
    ({"images/a.jpg": 0, "gt/a.png": 1, "labels/a.png": 2}, ["two candidate mask folders", "gt", "labels"]),
    ({"images/a.jpg": 0, "images/a.png": 1, "masks/a.png": 2}, ["a.jpg", "a.png"]),
])
def test_import_refuses_ambiguous_input(tmp_path, capsys, files, words):
    for name, seed in files.items():
        if name.startswith("images/"):
            _photo(tmp_path / "src" / name, seed)
        else:
            _put(tmp_path / "src" / name, _crack(seed).astype(np.uint8))
    assert _import(tmp_path / "src", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and all(w in err for w in words)
    assert not (tmp_path / "out").exists()


def test_overwrite_replaces_only_folders_prepare_data_made(tmp_path, capsys):
    _layout(tmp_path / "src", "images/*.jpg", "masks/*.png", ["a"])
    users = tmp_path / "out" / "X"
    users.mkdir(parents=True)
    (users / "thesis.txt").write_text("a year of work")
    assert _import(tmp_path / "src", tmp_path / "out") == 2 and "--overwrite" in capsys.readouterr().err
    for args in (["--from", str(tmp_path / "src")], ["--synthetic", "--count", "2", "--size", "64"]):
        assert main([*args, "--name", "X", "--data-dir", str(tmp_path / "out"), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert str(users) in err and "rm -r" in err and "Traceback" not in err
        assert (users / "thesis.txt").read_text() == "a year of work"
        assert sorted(users.iterdir()) == [users / "thesis.txt"]
    # a folder an earlier import made (its marker) is replaced whole
    assert _import(tmp_path / "src", tmp_path / "made") == 0
    assert (tmp_path / "made" / "X" / ".crackseg-dataset").is_file()
    (tmp_path / "made" / "X" / "images" / "stale.jpg").write_bytes(b"left by the earlier import")
    assert _import(tmp_path / "src", tmp_path / "made", "--overwrite") == 0
    assert sorted(p.name for p in (tmp_path / "made" / "X" / "images").iterdir()) == ["a.jpg"]
    assert not list((tmp_path / "made").glob(".*partial"))


def test_overwrite_refuses_a_link_and_deletes_nothing_behind_it(tmp_path, capsys):
    _layout(tmp_path / "src", "images/*.jpg", "masks/*.png", ["a"])
    assert _import(tmp_path / "src", tmp_path / "made") == 0            # a marked folder of ours...
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "X").symlink_to(tmp_path / "made" / "X", target_is_directory=True)   # ...behind a link
    assert _import(tmp_path / "src", tmp_path / "out", "--overwrite") == 2
    assert "link" in capsys.readouterr().err and (tmp_path / "made" / "X" / "images" / "a.jpg").is_file()


def test_import_refuses_bad_masks_without_writing(tmp_path, capsys):
    _layout(tmp_path / "src", "images/*.jpg", "masks/*.png", ["a"])
    colour = np.zeros((24, 32, 3), np.uint8)
    colour[..., 2] = 255  # red: channels differ
    _put(tmp_path / "src" / "masks" / "a.png", colour)
    assert _import(tmp_path / "src", tmp_path / "out2") == 2
    assert "a.png" in capsys.readouterr().err and not (tmp_path / "out2" / "X").exists()
    assert not list((tmp_path / "out2").glob(".*"))


def test_ctrl_c_during_import_leaves_no_partial_folder(tmp_path, capsys, monkeypatch):
    _layout(tmp_path / "src", "images/*.jpg", "masks/*.png", ["a", "b", "c"])
    written = []

    def write_then_interrupt(path, array, **options):
        written.append(path)
        if len(written) == 2:   # the second mask: a half-written folder exists now
            raise KeyboardInterrupt
        return original(path, array, **options)

    original = prepare_data.write_image
    monkeypatch.setattr(prepare_data, "write_image", write_then_interrupt)
    argv = ["--from", str(tmp_path / "src"), "--name", "X", "--data-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: main(argv))
    assert stop.value.code == 130 and "interrupted" in capsys.readouterr().err
    assert len(written) == 2 and not (tmp_path / "out" / "X").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_import_refuses_output_inside_source(tmp_path, capsys):
    _layout(tmp_path / "src", "images/*.jpg", "masks/*.png", ["a"])
    assert main(["--from", str(tmp_path / "src"), "--data-dir", str(tmp_path / "src" / "inputs")]) == 2
    assert "overlap" in capsys.readouterr().err


def test_folder_roles():
    assert prepare_data._name_role(Path("CrackTree260_gt/gt")) == "gt"
    assert prepare_data._name_role(Path("DeepCrack/train_lab")) == "gt"
    assert prepare_data._name_role(Path("Stone331_mask")) == "maskword"
    assert prepare_data._name_role(Path("image")) == "image"
    assert prepare_data._name_role(Path("traincrop")) is None
    assert prepare_data._split_of(Path("DeepCrack/test_img")) == "TEST"
