"""The documents the code and README point to exist and say what the code does."""
import re
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
