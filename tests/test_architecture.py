"""The package's layers, kept: who may import whom (docs/architecture.md), no import circle, small modules,
and the 0.1 flat module paths still importable with a DeprecationWarning.

The import graph is read from the source with `ast` (every `import` statement, also those inside
functions), so nothing is executed and a lazy import counts like any other.
"""
from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mmcourse"

# A module may import modules of its own layer or of a layer above it in this list, never below.
LAYERS = ["base", "data", "objectives", "models", "training", "evaluation", "viz", "recipes", "classroom"]
BASE = {"utils", "norms", "_compat", "_lazy", "_filelock"}
MAX_LINES = 600
# Modules allowed over MAX_LINES: data, not logic.
LONG_DATA_MODULES = {"classroom/checks/question_bank.py"}


def layer(module: str) -> str | None:
    """`mmcourse.models.clip` -> "models"; the top-level `mmcourse` package itself -> None."""
    parts = module.split(".")
    if parts[0] != "mmcourse" or len(parts) == 1:
        return None
    return "base" if parts[1] in BASE else parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every mmcourse module `path` imports (relative imports resolved; `from X import y` counts as X.y
    when X.y is a module, else as X)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mmcourse")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("mmcourse"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() or \
                    (PACKAGE.parent / sub.replace(".", "/") / "__init__.py").exists()
                out.add(sub if is_module else target)
    return out


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges that import a lower layer, as "a -> b (layer -> layer)"."""
    bad = []
    for src, targets in graph.items():
        ls = layer(src)
        if ls is None:
            continue
        for dst in sorted(targets):
            ld = layer(dst)
            if ld is not None and LAYERS.index(ld) > LAYERS.index(ls):
                bad.append(f"{src} -> {dst} ({ls} may not import {ld})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. import circles. A package
    importing its own submodules (lazily, for re-export) is not a circle."""
    edges = {a: {b for b in bs if b in graph and not b.startswith(a + ".")} for a, bs in graph.items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_every_module_is_in_a_layer():
    unknown = {m for m in import_graph() if layer(m) not in (None, *LAYERS)}
    assert not unknown, f"modules outside the layers of docs/architecture.md: {sorted(unknown)}"


def test_no_module_imports_a_lower_layer():
    violations = layer_violations(import_graph())
    assert not violations, "layer rule broken:\n  " + "\n  ".join(violations)


def test_the_contract_catches_a_model_importing_the_loop():
    graph = import_graph()
    graph["mmcourse.models.clip"] = graph["mmcourse.models.clip"] | {"mmcourse.training.loop"}
    graph["mmcourse.training.loop"] = graph["mmcourse.training.loop"] | {"mmcourse.recipes.cache"}
    graph["mmcourse.data.digits"] = graph["mmcourse.data.digits"] | {"mmcourse.classroom.checks"}
    found = layer_violations(graph)
    assert "mmcourse.models.clip -> mmcourse.training.loop (models may not import training)" in found
    assert "mmcourse.training.loop -> mmcourse.recipes.cache (training may not import recipes)" in found
    assert "mmcourse.data.digits -> mmcourse.classroom.checks (data may not import classroom)" in found


def test_models_know_no_loop_cache_or_metric():
    graph = import_graph()
    for src, targets in graph.items():
        if layer(src) == "models":
            assert not {t for t in targets if layer(t) in ("training", "recipes", "evaluation", "classroom")}, src


def test_no_import_circle():
    found = cycles(import_graph())
    assert not found, f"import circles: {found}"


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_stay_small():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    long = {k: v for k, v in long.items() if k not in LONG_DATA_MODULES}
    assert not long, f"modules over {MAX_LINES} lines (split them by idea): {long}"


@pytest.mark.parametrize("old, name, new", [
    ("mmcourse.train", "fit", "mmcourse.training.loop"),
    ("mmcourse.train", "TrainConfig", "mmcourse.training.types"),
    ("mmcourse.pretrained", "load_digits_clip", "mmcourse.recipes.clip"),
    ("mmcourse.pretrained", "cache_dir", "mmcourse.recipes.cache"),
    ("mmcourse.losses", "info_nce", "mmcourse.objectives.losses"),
    ("mmcourse.evaluate", "retrieval_metrics", "mmcourse.evaluation.retrieval"),
    ("mmcourse.checks", "check_info_nce", "mmcourse.classroom.checks"),
    ("mmcourse.checks.core", "CheckFailed", "mmcourse.classroom.checks.core"),
    ("mmcourse.temperature", "ToyCLIP", "mmcourse.models.toy"),
])
def test_old_paths_import_with_a_deprecation_warning(old, name, new):
    import sys

    for key in [k for k in sys.modules if k == old or k.startswith(old + ".")]:
        del sys.modules[key]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(f"import {old}", "learner_cell.py", "exec"), {})  # as a notebook cell would
        module = importlib.import_module(old)
    # The warning names the old and new place and points at the learner's import line (so Jupyter shows it).
    assert any(issubclass(w.category, DeprecationWarning) and old in str(w.message) and "moved to" in str(w.message)
               and w.filename == "learner_cell.py" for w in caught), [(str(w.message), w.filename) for w in caught]
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError, match="not_a_name"):
        getattr(module, "not_a_name")


def test_a_name_that_never_existed_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mmcourse.no_such_module")


def test_classroom_tools_find_the_repository_folders():
    """The classroom tools moved one folder down: their default folders must still be the repository's, and
    an empty or wrong folder is an error, not a silent "nothing to do"."""
    from mmcourse.classroom import course, exercises

    root = PACKAGE.parent
    assert exercises.Paths().solutions == root / "solutions" and exercises.Paths().exercises == root / "exercises"
    assert course.lessons()[0] == root / "notebooks" / "00_welcome.ipynb"
    with pytest.raises(FileNotFoundError, match="no solution notebooks"):
        exercises.generate(exercises.Paths(root / "no_such_folder", root / "no_such_folder"), check=True)
    with pytest.raises(FileNotFoundError, match="no lesson notebooks"):
        course.lessons(root / "no_such_folder")
