"""The package's import graph has no cycle, counting imports inside functions (they hide cycles, not remove
them) and leaving out `if TYPE_CHECKING:` imports (never executed)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.project import ROOT

PACKAGE = "prdit"


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package's own name for its __init__)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports anywhere in its file (relative imports resolved)."""
    found: set[str] = set()
    skip: set[int] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_the_package_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "prdit.model.registry" in graph and "prdit.model.highres" in graph["prdit.model.registry"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from prdit.sub.b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from prdit.sub import a\n"
    )
    graph = import_graph(tmp_path)
    assert graph["prdit.sub.c"] == set()
    assert find_cycle(graph) == ["prdit.sub.a", "prdit.sub.b", "prdit.sub.a"]


LAYOUT = {
    "data",
    "raw",
    "interim",
    "processed",
    "splits",
    "features",
    "models",
    "samples",
    "metrics",
    "reports",
}


def layout_spellings(path: Path) -> list[int]:
    """Lines of `path` that build a project path by hand: Path("data/...") or x / "processed" and alike."""

    def is_layout(node: ast.AST) -> bool:
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            return False
        return node.value in LAYOUT or node.value.split("/")[0] in LAYOUT - {"raw"} and "/" in node.value

    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if is_layout(node.left) or is_layout(node.right):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Path":
            if node.args and is_layout(node.args[0]):
                lines.append(node.lineno)
    return lines


NOT_YET: set[str] = set()  # modules allowed to spell the layout while they move (none now)


def test_only_paths_py_spells_the_project_layout() -> None:
    found = {
        str(path.relative_to(ROOT)): lines
        for name, path in module_names().items()
        if name != "prdit.paths" and name not in NOT_YET and (lines := layout_spellings(path))
    }
    assert found == {}, f"build these paths with prdit.paths: {found}"
    assert layout_spellings(ROOT / "prdit" / "paths.py")  # the check sees the spellings where they are


# Issue 28 point 0: one stage layer. The library packages (prdit.<package>: the maths, with explicit
# arguments) know nothing of the pipeline around them: MLflow is the stage modules' business (prdit/stages/*,
# one per `prdit <command>`) and the CLI's (ui-url, tracking-import); the project layout (prdit.paths) and the
# parameter file (prdit.config.Params, or loading one) are resolved there too. A library function may take a
# config *section* (TrainStage, Downloader, ...) as its typed argument, as nanoGPT's model takes GPTConfig.
LIBRARY = {"acquire", "data", "model", "diffusion", "train", "evaluate"}
PIPELINE = {"prdit.tracking", "prdit.paths"}  # never imported by a library module
PARAMS_FILE = {"Params", "load", "from_dict", "params_hash"}  # what of prdit.config stands for the whole file


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def names_from(path: Path, module: str) -> set[str]:
    """Names `path` imports from `module`, `if TYPE_CHECKING:` blocks included (a type is knowledge too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import) and any(a.name == module for a in node.names):
            found.add("*")
    return found


def pipeline_knowledge(root: Path = ROOT) -> dict[str, set[str]]:
    """Library module -> what it imports of the pipeline (tracking, paths, the parameter file)."""
    modules = module_names(root)
    graph = import_graph(root)
    out = {}
    for name, path in modules.items():
        if package_of(name) not in LIBRARY:
            continue
        found = (graph[name] & PIPELINE) | {f"prdit.paths.{n}" for n in names_from(path, "prdit.paths")}
        found |= {f"prdit.config.{n}" for n in names_from(path, "prdit.config") & (PARAMS_FILE | {"*"})}
        found |= {"prdit.paths" for n in names_from(path, "prdit") if n == "paths"}
        if found:
            out[name] = found
    return out


def test_only_the_stage_layer_imports_tracking() -> None:
    graph = import_graph()
    users = {name for name, deps in graph.items() if "prdit.tracking" in deps}
    stages = {name for name in users if name.startswith("prdit.stages.")}
    assert users - stages - {"prdit.cli"} == set(), "import prdit.tracking only in prdit/stages/"
    for command in ("phantom", "download", "ingest", "preprocess", "split", "train", "sample", "evaluate"):
        assert f"prdit.stages.{command}" in stages  # the stages that log runs


def test_library_packages_know_nothing_of_the_pipeline() -> None:
    knowledge = pipeline_knowledge()
    assert knowledge == {}, "resolve these in prdit/stages/ and pass explicit arguments: " + str(knowledge)
    graph = import_graph()
    diffusion = {m for m in graph if package_of(m) == "diffusion" and "prdit.config" in graph[m]}
    assert diffusion == set(), "prdit.diffusion takes plain arguments, not config sections"
    data = {name for name in graph if package_of(name) in ("data", "acquire", "evaluate")}
    assert {"prdit.data.ingest", "prdit.data.preprocess", "prdit.acquire.batch", "prdit.evaluate.run"} <= data
    assert not {
        name for name in data if "prdit.config" in graph[name]
    }  # not even a config section at run time


def test_the_pipeline_checker_sees_params_paths_and_type_only_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    for sub in ("train", "stages"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    for leaf in ("paths", "tracking", "config"):
        (pkg / f"{leaf}.py").write_text("")
    (pkg / "train" / "a.py").write_text("from prdit import paths\n")
    (pkg / "train" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from prdit.config import Params\n"
    )
    (pkg / "train" / "c.py").write_text("from prdit.config import TrainStage\n")  # a section: allowed
    (pkg / "train" / "d.py").write_text("def f():\n    import prdit.tracking\n")
    (pkg / "stages" / "e.py").write_text(
        "from prdit import paths, tracking\nfrom prdit.config import Params\n"
    )
    assert pipeline_knowledge(tmp_path) == {
        "prdit.train.a": {"prdit.paths"},
        "prdit.train.b": {"prdit.config.Params"},
        "prdit.train.d": {"prdit.tracking"},
    }


def test_each_command_has_its_stage_module() -> None:
    """A rule -> `prdit <command>` -> prdit/stages/<command>.py, whose `run` the CLI calls: one hop."""
    import importlib
    import inspect

    from prdit.cli import COMMANDS

    for command, handler in COMMANDS.items():
        if command in ("ui-url", "tracking-import"):  # the CLI's own MLflow helpers, not pipeline stages
            continue
        module = importlib.import_module(f"prdit.stages.{command.replace('-', '_')}")
        assert callable(module.run), command
        assert f"{command.replace('-', '_')}" in inspect.getsource(handler), command
