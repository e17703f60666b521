"""The README's picture of predict.py's report: 20 CFD photos through the bundled model with
--report --mm-per-px 0.5, report.html rendered by headless Chromium (Debian's package `chromium`),
kept small as docs/report.jpg.

    python benchmarks/report_screenshot.py --data-dir ../shared/data
    python benchmarks/report_screenshot.py --list     # the commands it runs
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "report.jpg"
PHOTOS, MM_PER_PX = 20, 0.5
WINDOW = (1100, 2400)        # css px: the settings, the summary, the histogram and the first cards
WIDTH, QUALITY = 900, 70     # the kept picture: readable, about 150 KB


def commands(photos: Path, out: Path, shot: Path, browser: str) -> list[list[str]]:
    return [[sys.executable, str(ROOT / "predict.py"), str(photos), "--out", str(out), "--report",
             "--mm-per-px", str(MM_PER_PX)],
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}", (out / "report.html").as_uri()]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--list", action="store_true", help="print the commands and exit")
    args = p.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cmds = commands(tmp / "photos", tmp / "out", tmp / "shot.png", browser)
        if args.list:
            print(f"# the first {PHOTOS} photos of {args.data_dir / 'CFD' / 'images'} copied to PHOTOS")
            print(*(" ".join(c) for c in cmds), sep="\n")
            return
        if not shutil.which(browser):
            sys.exit("needs headless Chromium: apt-get install chromium")
        (tmp / "photos").mkdir()
        for photo in sorted((args.data_dir / "CFD" / "images").iterdir())[:PHOTOS]:
            shutil.copy(photo, tmp / "photos")
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=cmd[0] == browser)
        shot = cv2.imread(str(tmp / "shot.png"))
        small = cv2.resize(shot, (WIDTH, round(shot.shape[0] * WIDTH / shot.shape[1])), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(OUT), small, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
