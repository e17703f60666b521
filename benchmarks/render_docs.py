"""Re-render every table of README.md and docs/*.md from the benchmark records.

    python benchmarks/render_docs.py            # rewrite the tables in place
    python benchmarks/render_docs.py --check    # exit 1 and name the tables that differ
    python benchmarks/render_docs.py --stage    # also put the committed text, tables refreshed, in git's index

A rendered table sits between two marker comments that name the command printing it, optionally
one part of its output (parts are separated by blank lines):

    <!-- table: python benchmarks/studies/architecture.py --table-only -->
    | ... |
    <!-- /table -->

    <!-- table: python benchmarks/generalization.py --table-only (part 4) -->

The commands read only the committed records (benchmarks/results/*.jsonl), never models/, so
tests/test_docs.py runs this check on a fresh clone. No number in these blocks is typed by hand.
"""
import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<command>.+?)(?: \(part (?P<part>\d+)\))? -->\n)(?P<body>.*?)(<!-- /table -->)",
                   re.DOTALL)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# Every command runs as __main__ in one interpreter (its imports made once), its stdout kept.
RUN_ALL = """
import contextlib, io, json, runpy, shlex, sys
found = {}
for command in json.loads(sys.argv[1]):
    argv = shlex.split(command)[1:]
    out = io.StringIO()
    sys.argv = argv
    with contextlib.redirect_stdout(out):
        runpy.run_path(argv[0], run_name="__main__")
    found[command] = out.getvalue()
print(json.dumps(found))
"""
_outputs: dict[str, str] = {}


def run_commands(commands: list[str]) -> None:
    """Fill the cache with every command's output, in one subprocess."""
    todo = sorted({c for c in commands if c not in _outputs})
    for command in todo:
        if shlex.split(command)[0] != "python":
            raise ValueError(f"a table command must start with python: {command!r}")
    if todo:
        result = subprocess.run([sys.executable, "-c", RUN_ALL, json.dumps(todo)], cwd=ROOT, capture_output=True,
                                text=True, timeout=600)
        if result.returncode:
            raise RuntimeError(f"rendering {todo} failed: {result.stderr[-1000:]}")
        _outputs.update(json.loads(result.stdout.splitlines()[-1]))


def output(command: str) -> str:
    run_commands([command])
    return _outputs[command]


def rendered(command: str, part: str | None) -> str:
    """The command's output, or its part-th blank-line-separated part, ending with one newline."""
    text = output(command).strip("\n")
    if part:
        parts = re.split(r"\n\s*\n", text)
        text = parts[int(part) - 1]
    return text + "\n"


def refresh(text: str) -> tuple[str, list[str]]:
    """The document with every block re-rendered, and the commands whose blocks changed."""
    changed = []
    run_commands([match["command"] for match in BLOCK.finditer(text)])

    def replace(match):
        new = rendered(match["command"], match["part"])
        if new != match["body"]:
            changed.append(match["command"] + (f" (part {match['part']})" if match["part"] else ""))
        return match.group(1) + new + match.group(5)
    return BLOCK.sub(replace, text), changed


def git(*args: str, text: str | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=ROOT, input=text, capture_output=True, text=True, check=True)
    return result.stdout


def stage_committed_tables(paths: list[Path]) -> list[str]:
    """Stage each document's committed text (HEAD's) with its tables re-rendered, so a commit of a grown
    record carries its tables without whatever prose is being written beside it in the working tree;
    benchmarks/runner.py --commit does this in a scratch index (GIT_INDEX_FILE). Returns the staged paths."""
    staged = []
    for path in paths:
        rel = str(path.relative_to(ROOT))
        try:
            committed = git("show", f"HEAD:{rel}")
        except subprocess.CalledProcessError:
            continue   # not committed yet: nothing of it can go stale in HEAD
        new, changed = refresh(committed)
        if changed:
            blob = git("hash-object", "-w", "--stdin", text=new).strip()
            git("update-index", "--cacheinfo", f"100644,{blob},{rel}")
            staged.append(rel)
    return staged


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    p.add_argument("--stage", action="store_true",
                   help="also stage HEAD's text of each document with its tables re-rendered (prints the paths)")
    p.add_argument("only", nargs="*", type=Path, metavar="DOCUMENT",
                   help="only these documents (e.g. docs/sources.md after its record grew); default: all")
    args = p.parse_args()
    paths = [ROOT / d for d in args.only] or documents()
    if args.stage:
        print("\n".join(stage_committed_tables(paths)))
    stale = []
    for path in paths:
        new, changed = refresh(path.read_text())
        stale += [f"{path.relative_to(ROOT)}: {command}" for command in changed]
        if changed and not args.check:
            path.write_text(new)
    for line in [] if args.stage else stale:   # --stage's stdout is the staged paths alone
        print(("out of date: " if args.check else "re-rendered: ") + line)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
