"""The shape of the code: no import circles, no entry script imported by another module, and
files, functions and parameter lists small enough to read (tests/ exempt)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_LINES, MAX_FUNCTION_LINES, MAX_PARAMETERS = 500, 80, 7


def code_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "tests" not in p.relative_to(ROOT).parts
                  and not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


def module_name(path: Path) -> str:
    """Scripts put their own folder (and the repository) on sys.path: a module is known by its stem."""
    return path.stem


def is_entry_script(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


def imported_names(tree: ast.Module) -> set[str]:
    """Every module imported anywhere in the file, function-local imports included."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def parsed() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for path in code_files():
        name = module_name(path)
        assert name not in found, f"two modules named {name}: {found[name][0]} and {path}"
        found[name] = (path, ast.parse(path.read_text()))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = parsed()
    return {name: imported_names(tree) & set(modules) - {name} for name, (_, tree) in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
            if nxt not in state:
                found = visit(nxt, trail + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None
    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_no_import_circle():
    assert find_cycle(import_graph()) is None, find_cycle(import_graph())


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_an_entry_script():
    modules = parsed()
    entry = {name for name, (_, tree) in modules.items() if is_entry_script(tree)}
    offenders = sorted(f"{name} imports {target}" for name, targets in import_graph().items()
                       for target in targets & entry)
    assert not offenders, offenders


def test_files_functions_and_parameter_lists_are_small():
    problems = []
    for path, tree in parsed().values():
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES:
            problems.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                args = node.args
                params = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
                params += [a.arg for a in (args.vararg, args.kwarg) if a]
                if length > MAX_FUNCTION_LINES:
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
                if len(params) > MAX_PARAMETERS:
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {len(params)} parameters")
    assert not problems, "\n".join(problems)


def test_the_user_scripts_exit_through_run_cli():
    """Ctrl-C in any of the five entry scripts prints one line and exits 130 (utils.run_cli), never a traceback."""
    for script in ("train", "evaluate", "predict", "prepare_data", "export"):
        tree = ast.parse((ROOT / f"{script}.py").read_text())
        main_block = next(node for node in tree.body
                          if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))
        assert "run_cli(main)" in ast.unparse(main_block), f"{script}.py does not run main through utils.run_cli"


def namespace_parameters(tree: ast.Module) -> list[str]:
    """Functions of a module taking argparse's Namespace: a parameter named `args` or annotated as one."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs:
                annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                if arg.arg == "args" or "Namespace" in annotation:
                    found.append(f"{node.name}({arg.arg})")
    return found


def test_library_functions_take_values_not_the_argparse_namespace():
    """Only the entry scripts read argparse's Namespace; library modules take values or small dataclasses."""
    offenders = [f"{path.relative_to(ROOT)}: {', '.join(found)}" for name, (path, tree) in parsed().items()
                 if path.parent == ROOT and not is_entry_script(tree) and (found := namespace_parameters(tree))]
    assert not offenders, offenders
    planted = ast.parse("import argparse\ndef a(args): ...\ndef b(options: argparse.Namespace): ...\n"
                        "def c(opt: 'Optimisation', name: str): ...")
    assert namespace_parameters(planted) == ["a(args)", "b(options)"]
