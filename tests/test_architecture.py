"""The shape of the library, kept by a test: imports point down, functions and files stay small.

Layers, lowest first (a module may import its own layer or lower ones, never a higher one):

    foundation  errors, process, metrics, config, store, runlock, artifacts
    runtime     distributed, checkpoints, LR schedules, precision, device (knows nothing of SRS);
                tracking (MLflow runs and the model registry)
    data        examples, transforms, datasets, the sticker cache, readers
    model       the selector, its losses, tokenizer, best.pt
    work        emotion, evaluate, inference, library, sentiment, launch, train
    faces       cli, serving, deploy, report, study_report

Inside ``work``, training may use evaluation and perception (the teacher), never the other
way: ``evaluate``, ``emotion``, ``inference`` and ``library`` import nothing from ``train``.
No module of the library imports the KFP layer (``components``, ``pipelines``, ``kfp``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "srs_core"
LAYERS = {
    "foundation": 0, "runtime": 1, "data": 2, "model": 3, "work": 4, "faces": 5,
}
LAYER_OF = {
    "errors": "foundation", "process": "foundation", "metrics": "foundation",
    "config": "foundation", "config_checks": "foundation", "store": "foundation",
    "runlock": "foundation", "artifacts": "foundation",
    "runtime": "runtime", "tracking": "runtime",
    "data": "data",
    "model": "model",
    "emotion": "work", "evaluate": "work", "inference": "work", "library": "work",
    "sentiment": "work", "launch": "work", "train": "work", "study": "work",
    "cli": "faces", "serving": "faces", "deploy": "faces", "report": "faces",
    "study_report": "faces",
}
# Same layer, still forbidden: training sits above evaluation and perception.
NEVER = {
    "evaluate": {"train"}, "emotion": {"train"}, "inference": {"train"}, "library": {"train"},
    "sentiment": {"train"}, "launch": {"train", "emotion", "evaluate", "library"},
}
OUTSIDE = ("components", "pipelines", "kfp")
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 350
# Declarative code: argument parsers read as tables, not as logic.
DECLARATIVE = {"register", "build_parser", "add_config_arguments"}


def _modules(root: Path = ROOT) -> list[Path]:
    return sorted(root.rglob("*.py"))


def _top(path: Path, root: Path = ROOT) -> str:
    """``srs_core/train/loop.py`` -> ``train``; ``srs_core/store/s3.py`` -> ``store``."""
    part = path.relative_to(root).parts[0]
    return part[:-3] if part.endswith(".py") else part


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every imported module name, function-level imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "srs_core":  # from srs_core import store
                found += [(node.lineno, f"srs_core.{alias.name}") for alias in node.names]
    return found


def upward_imports(root: Path = ROOT) -> list[str]:
    """Each import that breaks the layering, as ``file:line imports name (why)``."""
    wrong = []
    for path in _modules(root):
        source = _top(path, root)
        if source == "__init__":
            continue
        for line, name in _imports(path):
            parts = name.split(".")
            where = f"{path.relative_to(root.parent)}:{line} imports {name}"
            if parts[0] in OUTSIDE:
                wrong.append(f"{where} (the library never imports the KFP layer)")
            if parts[0] != "srs_core" or len(parts) < 2 or parts[1] not in LAYER_OF:
                continue
            target = parts[1]
            if target == source or source not in LAYER_OF:
                continue
            if LAYERS[LAYER_OF[target]] > LAYERS[LAYER_OF[source]]:
                wrong.append(f"{where} ({LAYER_OF[source]} -> {LAYER_OF[target]}: upward)")
            if target in NEVER.get(source, ()):
                wrong.append(f"{where} ({source} must not depend on {target})")
    return wrong


def test_every_module_has_a_layer() -> None:
    missing = sorted({_top(p) for p in _modules()} - set(LAYER_OF) - {"__init__"})
    assert not missing, f"give these a layer in LAYER_OF: {missing}"


def test_imports_point_down() -> None:
    wrong = upward_imports()
    assert not wrong, "\n".join(wrong)


def test_the_check_catches_upward_imports(tmp_path: Path) -> None:
    root = tmp_path / "srs_core"
    (root / "emotion").mkdir(parents=True)
    (root / "evaluate.py").write_text(
        "def f():\n    from srs_core.train.loop import train\n", encoding="utf-8")
    (root / "emotion" / "teacher.py").write_text("import kfp\n", encoding="utf-8")
    (root / "data.py").write_text("from srs_core import model\n", encoding="utf-8")
    found = upward_imports(root)
    assert len(found) == 3, found
    assert any("evaluate.py:2" in item and "must not depend on train" in item for item in found)
    assert any("teacher.py:1" in item and "KFP layer" in item for item in found)
    assert any("data.py:1" in item and "data -> model: upward" in item for item in found)


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name} "
            f"({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name not in DECLARATIVE
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_functions_are_short() -> None:
    long = [item for path in _modules() for item in _long_functions(path)]
    assert not long, "split these:\n" + "\n".join(long)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_are_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(ROOT.parent)}: {lines} lines"
