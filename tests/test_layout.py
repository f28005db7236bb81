"""The package's wings and the rules between them, read from the imports of every module (function-level
imports included): a newcomer can trust the folder to show which code may use which."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import REPO

from electra_ds.stages import STAGES, module

PACKAGE = REPO / "electra_ds"
# wing -> the wings its modules may import (itself always). Only cli, stages and pipeline see everything.
ALLOWED = {
    "common": set(),
    "data": {"common"},
    "tracking": {"common"},
    "pretraining": {"common", "data", "tracking"},
    "finetuning": {"common", "data", "tracking"},
    "pipeline": {"common", "data", "tracking", "pretraining", "finetuning"},
}


def _wing(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "electra_ds" and parts[1] in ALLOWED else None


def _imports(path: Path) -> list[str]:
    """Every electra_ds module a file imports, at any depth of the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("electra_ds")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("electra_ds"):
            out += [f"{node.module}.{a.name}" if node.module == "electra_ds" else node.module for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("electra_ds."):
            out.append(node.value)  # importlib.import_module("electra_ds....")
    return out


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_lives_in_a_wing():
    loose = {p.name for p in PACKAGE.glob("*.py")}
    assert loose == {"__init__.py", "__main__.py", "cli.py", "stages.py"}, \
        f"modules outside a wing: {sorted(loose - {'__init__.py', '__main__.py', 'cli.py', 'stages.py'})}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == {*ALLOWED, "schemas"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_wing_rules(path):
    rel = path.relative_to(PACKAGE)
    wing = rel.parts[0] if len(rel.parts) > 1 else None
    if wing is None or wing == "pipeline":
        return  # cli, stages and the pipeline see everything
    bad = [name for name in _imports(path)
           if (target := _wing(name)) not in (None, wing) and target not in ALLOWED[wing]]
    assert not bad, f"{rel} ({wing}) imports {bad}; {wing} may import only {sorted(ALLOWED[wing]) or 'nothing'}"


def test_the_rules_catch_a_crossing(tmp_path):
    """The checker itself: a fine-tuning module importing pretraining is seen (also inside a function)."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from electra_ds.pretraining.model import ElectraPretrainer\n")
    assert [_wing(n) for n in _imports(planted)] == ["pretraining"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_table_names_real_modules(stage):
    mod = module(stage)
    assert hasattr(mod, "add_arguments")
    assert callable(getattr(mod, STAGES[stage].entry)), f"{STAGES[stage].module} has no {STAGES[stage].entry}()"
    assert isinstance(getattr(mod, "SETTINGS", {}), dict), f"{STAGES[stage].module}.SETTINGS"
