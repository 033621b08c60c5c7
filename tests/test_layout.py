"""The house rules of the layout: scripts on top, plumbing in the package lab/, imports that point down the layers
(LAYERS below, drawn in docs/layout.md), no import circles, no script importing another (run_pipeline.py, bench/
and the tests may call a script's main), no module above 450 lines, and lab.ROOT is the repository root every
relative path hangs on."""

import ast
import re
from pathlib import Path

import pytest

import lab

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in ROOT.glob("*.py") if "__main__" in p.read_text())
MODULES = {f"lab.{p.stem}": p for p in (ROOT / "lab").glob("*.py") if p.stem != "__init__"}
MODULES["lab"] = ROOT / "lab" / "__init__.py"
MODULES["backbone"] = ROOT / "backbone.py"  # the model a student reads: imported by the scripts and the package
MAX_LINES = 450
# The layers of lab/ and backbone.py, top to bottom, under the scripts (which may import any of them). An import
# points to a lower layer, or sideways within its layer without a circle; never up. Every module is in exactly one
# layer: a new module joins this table, and the layer table of docs/layout.md (tested to agree).
LAYERS = (
    ("entry points", ("lab.demo_data",)),  # generates the demo; imported by the entry points alone
    (
        "stages",
        (
            "lab.abundance_inputs",
            "lab.abundances",
            "lab.cached_features",
            "lab.class_matrices",
            "lab.cruise_abundances",
            "lab.checkpoint",
            "lab.ecotaxa",
            "lab.embedding_files",
            "lab.head_training",
            "lab.interactive_map",
            "lab.label_audit",
            "lab.novelty_scores",
            "lab.operating_points",
            "lab.prediction_table",
            "lab.report_charts",
            "lab.report_cruise",
            "lab.report_many",
            "lab.report_optional",
            "lab.report_run",
            "lab.report_sections",
            "lab.report_tables",
            "lab.samples",
            "lab.trunk_cache",
        ),
    ),
    (
        "data",
        (
            "lab.data_folders",
            "lab.label_tables",
            "lab.near_copies",
            "lab.near_copy_index",
            "lab.particle_match",
            "lab.splitting",
        ),
    ),
    ("model", ("backbone",)),
    (
        "foundation",
        (
            "lab.artifacts",
            "lab.config",
            "lab.distributed",
            "lab.hardware",
            "lab.image_io",
            "lab.manifest",
            "lab.output_lock",
            "lab.plotting",
            "lab.precision",
            "lab.progress",
            "lab.runtime",
            "lab.settings_help",
            "lab.thread_choice",
        ),
    ),
    ("lab/__init__", ("lab",)),
)


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


def import_graph(modules):
    """{module: the project modules it imports} over modules ({name: path})."""
    return {name: {m for m in imported(path) if m in modules and m != name} for name, path in modules.items()}


def import_circle(graph):
    """One import circle of the graph as a list of modules (its first one again at the end), or None."""
    state = {}

    def visit(node, trail):
        if state.get(node) == "open":
            return trail[trail.index(node) :] + [node]
        if state.get(node) == "done":
            return None
        state[node] = "open"
        for nxt in sorted(graph[node]):
            circle = visit(nxt, trail + [node])
            if circle:
                return circle
        state[node] = "done"
        return None

    return next((circle for name in sorted(graph) if (circle := visit(name, []))), None)


def upward_imports(graph):
    """Every import that points to a higher layer, as 'importer -> imported (layer -> higher layer)', sorted."""
    height = {module: len(LAYERS) - i for i, (_, members) in enumerate(LAYERS) for module in members}
    layer = {module: name for name, members in LAYERS for module in members}
    unplaced = sorted(set(graph) - set(layer))
    assert not unplaced, f"{unplaced} are in no layer: add each to one layer of LAYERS (and of docs/layout.md)"
    return sorted(
        f"{importer} -> {target} ({layer[importer]} -> {layer[target]}, a higher layer)"
        for importer, targets in graph.items()
        for target in targets
        if height[target] > height[importer]
    )


def test_no_module_imports_another_in_a_circle():
    graph = import_graph(MODULES)
    assert graph["lab"] == set(), "lab/__init__.py must import none of its modules"
    circle = import_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_every_module_is_in_exactly_one_layer():
    listed = [module for _, members in LAYERS for module in members]
    twice = sorted({m for m in listed if listed.count(m) > 1})
    assert not twice, f"{twice} are in more than one layer of LAYERS"
    assert not set(MODULES) - set(listed), f"{sorted(set(MODULES) - set(listed))}: add them to a layer of LAYERS"
    assert not set(listed) - set(MODULES), f"{sorted(set(listed) - set(MODULES))} in LAYERS are no module"


def test_imports_point_down_the_layers():
    upward = upward_imports(import_graph(MODULES))
    assert not upward, "imports that point up the layers (LAYERS in this file):\n" + "\n".join(upward)


@pytest.mark.parametrize(
    ("module", "planted", "named"),
    [
        ("lab.data_folders", "from lab import demo_data", "lab.data_folders -> lab.demo_data (data -> entry points"),
        ("backbone", "from lab.checkpoint import load_trained", "backbone -> lab.checkpoint (model -> stages"),
        ("lab.precision", "def planted():\n    import backbone", "lab.precision -> backbone (foundation -> model"),
        ("lab", "from lab import artifacts", "lab -> lab.artifacts (lab/__init__ -> foundation"),
    ],
)
def test_the_layer_check_fails_on_a_planted_upward_import_and_names_it(tmp_path, module, planted, named):
    copy = tmp_path / MODULES[module].name
    copy.write_text(MODULES[module].read_text() + "\n\n" + planted + "\n")
    graph = import_graph({**MODULES, module: copy})
    assert upward_imports(import_graph(MODULES)) == []  # the lab as it is passes; the planted import alone fails
    assert len(upward_imports(graph)) == 1 and upward_imports(graph)[0].startswith(named)


def test_a_sideways_import_is_allowed_and_a_sideways_circle_is_not(tmp_path):
    copy = tmp_path / "artifacts.py"
    copy.write_text(MODULES["lab.artifacts"].read_text() + "\nfrom lab import manifest\n")  # manifest imports artifacts
    graph = import_graph({**MODULES, "lab.artifacts": copy})
    assert upward_imports(graph) == []  # both in the foundation layer
    circle = import_circle(graph)
    assert circle[0] == circle[-1] and sorted(circle[1:]) == ["lab.artifacts", "lab.manifest"], circle


def test_the_docs_draw_the_layers_of_the_test():
    """docs/layout.md's layer table lists the layers of LAYERS in order, each with exactly its modules."""
    text = (ROOT / "docs" / "layout.md").read_text()
    section = text[text.index("## Layers") :].split("\n## ")[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| ") and "`" in line]

    def module_name(path):  # `lab/splitting.py` -> lab.splitting, `backbone.py` -> backbone
        return path.removesuffix(".py").replace("/__init__", "").replace("/", ".")

    drawn = [
        (name.strip().strip("`"), sorted(module_name(p) for p in re.findall(r"`([^`]+\.py)`", cell)))
        for name, cell in rows
    ]
    assert drawn == [(name, sorted(members)) for name, members in LAYERS]


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
