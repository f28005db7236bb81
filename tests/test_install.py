"""The package as users install it: a wheel built from the sources, installed (not editable) into a fresh
environment, runs its stages from outside the checkout. Everything it reads at run time, the config schema
included (electra_ds/schemas/config.schema.yaml), must be inside the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

from helpers import REPO

SCHEMA_IN_WHEEL = "electra_ds/schemas/config.schema.yaml"


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def test_the_wheel_runs_the_demo_stages_outside_the_checkout(tmp_path):
    # Build from a copy of the sources: pip builds in the source folder (build/, *.egg-info), and no test writes
    # into the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO / "electra_ds", src / "electra_ds", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
          "--wheel-dir", tmp_path / "dist", src])
    wheel, = (tmp_path / "dist").glob("electra_ds-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert SCHEMA_IN_WHEEL in names, "the config schema is not in the wheel"
    assert not [n for n in names if n.startswith(("workflow/", "tests/"))]

    # A fresh environment whose only electra_ds is the wheel's. Its dependencies (torch, datasets, ...) come from
    # this test's environment through a .pth line, which adds that folder without running its .pth files (so the
    # checkout's editable install stays out).
    env = tmp_path / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", env])
    python = env / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    with open(os.path.join(site, "deps.pth"), "w", encoding="utf-8") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel])

    # From a folder outside the checkout, with nothing pointing at it.
    work = tmp_path / "work"
    work.mkdir()
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environ.update(PATH=f"{env / 'bin'}{os.pathsep}{environ['PATH']}", ELECTRA_DS_MLFLOW="0")
    where = json.loads(_run([python, "-c", "import json, electra_ds, electra_ds.common.settings as s; "
                                           "print(json.dumps([electra_ds.__file__, str(s.SCHEMA_PATH)]))"],
                            cwd=work, env=environ).stdout)
    assert all(path.startswith(site) for path in where), where

    electra_ds = env / "bin" / "electra-ds"
    assert "corpus.min_chars" in _run([electra_ds, "corpus", "--help"], cwd=work, env=environ).stdout
    _run([electra_ds, "corpus", "--sources", '[{"type": "demo"}]', "--output", "docs.jsonl", "--stats",
          "corpus.json", "--min-chars", "200"], cwd=work, env=environ)
    _run([electra_ds, "dedup", "--input", "docs.jsonl", "--output", "kept.jsonl", "--stats", "dedup.json"],
         cwd=work, env=environ)
    stats = json.loads((work / "dedup.json").read_text())
    assert stats["documents_out"] > 100
