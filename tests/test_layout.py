"""The house rules of the layout: scripts on top, plumbing in the package lab/, no import circles, no script
importing another (run_pipeline.py, bench/ and the tests may call a script's main), no module above 450 lines,
and lab.ROOT is the repository root every relative path hangs on."""

import ast
from pathlib import Path

import lab

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in ROOT.glob("*.py") if "__main__" in p.read_text())
MODULES = {f"lab.{p.stem}": p for p in (ROOT / "lab").glob("*.py") if p.stem != "__init__"}
MODULES["lab"] = ROOT / "lab" / "__init__.py"
MODULES["backbone"] = ROOT / "backbone.py"  # the model a student reads: imported by the scripts and the package
MAX_LINES = 450


def imported(path):
    """Every project module a file imports, at any depth of the file (imports inside functions count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "lab":
                names |= {f"lab.{a.name}" for a in node.names if f"lab.{a.name}" in MODULES}
    return names


def test_lab_root_is_the_repository_root():
    assert lab.ROOT == ROOT and (lab.ROOT / "configfile.py").is_file()


def test_the_design_cards_files_are_scripts_on_top():
    for name in (
        "dataloader",
        "train",
        "evaluate",
        "embed",
        "compute_average_distances",
        "dimensionality_reduction",
        "transfer_learning",
    ):
        assert name in SCRIPTS, name
    assert (ROOT / "backbone.py").is_file() and (ROOT / "configfile.py").is_file()


def test_no_module_imports_another_in_a_circle():
    graph = {name: {m for m in imported(path) if m in MODULES and m != name} for name, path in MODULES.items()}
    assert graph["lab"] == set(), "lab/__init__.py must import none of its modules"
    state = {}

    def visit(node, trail):
        if state.get(node) == "open":
            raise AssertionError("import circle: " + " -> ".join(trail + [node]))
        if state.get(node) == "done":
            return
        state[node] = "open"
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        state[node] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_scripts_import_the_package_never_another_script():
    for script in SCRIPTS:
        if script == "run_pipeline":  # runs every stage's main, in order
            continue
        others = imported(ROOT / f"{script}.py") & set(SCRIPTS)
        assert not others, f"{script}.py imports the script(s) {sorted(others)}: move what they share into lab/"
    for path in MODULES.values():
        assert not imported(path) & set(SCRIPTS), f"{path} imports a script"


def test_no_module_is_above_450_lines_and_each_says_what_it_is_for():
    for path in MODULES.values():
        lines = path.read_text().count("\n")
        assert lines <= MAX_LINES, f"{path} has {lines} lines: split it by concern"
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no docstring"


def test_every_script_has_a_docstring_a_main_and_a_main_guard():
    for script in SCRIPTS:
        tree = ast.parse((ROOT / f"{script}.py").read_text())
        assert ast.get_docstring(tree), script
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), script
