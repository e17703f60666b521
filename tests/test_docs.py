"""The documents the code and README point to exist and say what the code does."""
import re
import sys
from pathlib import Path

import losses
import train

ROOT = Path(__file__).resolve().parents[1]


def test_every_cited_method_document_exists():
    cited = set()
    for path in [*ROOT.glob("*.py"), *ROOT.glob("benchmarks/*.py"), ROOT / "README.md"]:
        cited |= set(re.findall(r"(?:docs/)?METHOD\.md", path.read_text()))
    assert cited and (ROOT / "docs" / "METHOD.md").is_file()


def test_method_page_names_every_departure_the_code_offers():
    text = (ROOT / "docs" / "METHOD.md").read_text()
    assert set(losses.LOSSES) - {"BCE", "Dice", "Focal", "BCEDiceLoss"} == {"BCEDiceBatch"}
    for departure in ("--loss BCEDiceBatch", "--no-align-corners", "channels_last", "threshold", "7,852,545"):
        assert departure in text, departure
    defaults = train.get_args_parser().parse_args([])
    assert defaults.loss == "BCEDiceLoss" and defaults.align_corners is True   # the reference stays the default
    assert defaults.lr == 1e-2 and defaults.scheduler == "ReduceLROnPlateau" and defaults.crop == 512


def test_the_code_has_a_licence():
    assert "Permission is hereby granted" in (ROOT / "LICENSE").read_text()


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_rendered_table_matches_its_records():
    """Each table between markers is what its command prints from the committed records today."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import render_docs
    texts = {path.name: path.read_text() for path in documents()}
    render_docs.run_commands([m["command"] for text in texts.values() for m in render_docs.BLOCK.finditer(text)])
    stale = {name: render_docs.refresh(text)[1] for name, text in texts.items()}
    assert not any(stale.values()), f"run python benchmarks/render_docs.py: {stale}"


HAND_TABLES = {"| file | owns |"}   # tables of words (the layout), not of measurements


def test_no_table_is_typed_by_hand():
    """Every table of README.md and docs/ lies inside a rendered block, except tables of words."""
    for path in documents():
        inside, header, loose = False, None, []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith("<!-- table: "):
                inside = True
            elif line == "<!-- /table -->":
                inside = False
            header = (header or line) if line.startswith("|") else None
            if line.startswith("|") and not inside and header not in HAND_TABLES:
                loose.append(f"{path.name}:{number}")
        assert not loose, loose


def test_readme_is_a_manual_with_the_two_commands_first():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    head = "\n".join(lines[:20])
    assert "pip install torch==2.13.0 -r requirements.txt && python train.py --preset fast" in head
    tests = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]   # CI runs the README's test command
    assert tests.startswith("pip install torch==2.13.0 -r requirements.txt pytest") and tests in head
    images = [p for p in (ROOT / "docs").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".gif")]
    assert sum(p.stat().st_size for p in images) <= 600 * 1024


def test_relative_links_resolve():
    for path in documents():
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_the_readmes_python_lines_predict_a_photo(tmp_path, monkeypatch):
    """The README's three lines run as written (a photo of the working directory, the bundled model)."""
    import cv2
    import numpy as np
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL).group(1)
    assert len(block.strip().splitlines()) == 3
    photo = np.full((120, 160, 3), 200, np.uint8)
    cv2.line(photo, (10, 20), (150, 100), (40, 40, 40), 3)
    cv2.imwrite(str(tmp_path / "photo.jpg"), photo)
    monkeypatch.chdir(tmp_path)
    found = {}
    exec(block, found)
    assert found["found"].prob.shape == (120, 160) and found["found"].mask.any()
