"""Repository conventions a user relies on: `snakemake --lint` stays as explained, every rule declares its software
(conda environment, container image), the conda files agree with the Makefile and pyproject.toml, the profiles'
latency-wait is what the README says, and tests never write into the checkout (tests/checkout_guard.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import checkout_guard
import pytest
import yaml
from helpers import REPO

# these tests run Snakemake in the checkout (its .snakemake folder): `make test` runs them alone, one at a time
pytestmark = pytest.mark.workflow

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--configfile", "config/config.yaml"]
ENV_FILE = REPO / "workflow/envs/electra-ds.yaml"

# What `snakemake --lint` still reports, each explained by a comment where it fires: (file, rule or "", title).
# A lint outside this list fails the test: fix it, or explain it there and add it here.
ACCEPTED_LINTS = {
    ("common.smk", "", "Environment variable MLFLOW_TRACKING_URI used but not asserted with envvars directive"),
    ("hub.smk", "", "Path composition with '+'"),
    ("data.smk", "", "Path composition with '+'"),
    ("pretrain.smk", "pretrain", "Shell command directly uses variable PT from outside of the rule"),
    *((name, "", "Mixed rules and functions in same snakefile.")
      for name in ("data.smk", "glue.smk", "hub.smk", "linear_probe.smk", "pretrain.smk")),
}
ANY_RULE = "Shell command directly uses variable rule from outside of the rule"  # {rule}: see the rule files' heads


def run_snakemake(*args, path_prepend=None, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": os.pathsep.join(filter(None, [path_prepend, str(Path(sys.executable).parent),
                                                                os.environ["PATH"]]))}
    return subprocess.run([*SNAKEMAKE, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def lints(text: str) -> set[tuple[str, str, str]]:
    """(snakefile name, rule name or "", title without its line number) for each lint in `snakemake --lint`'s text."""
    found, where = set(), None
    for line in text.splitlines():
        if m := re.match(r"Lints for snakefile (.+):$", line):
            where = (Path(m[1]).name, "")
        elif m := re.match(r"Lints for rule (\S+) \(line \d+, (.+)\):$", line):
            where = (Path(m[2]).name, m[1])
        elif (m := re.match(r"    \* (.+?):?$", line)) and where:
            found.add((*where, re.sub(r" in line \d+\.?$", "", m[1])))
    return found


def test_lints_parses_snakemakes_report():
    text = ("Lints for snakefile /x/workflow/rules/data.smk:\n    * Path composition with '+' in line 9:\n"
            "      body\nLints for rule corpus (line 7, /x/workflow/rules/data.smk):\n"
            "    * Specify a conda environment or container for each rule.:\n")
    assert lints(text) == {("data.smk", "", "Path composition with '+'"),
                           ("data.smk", "corpus", "Specify a conda environment or container for each rule.")}


def test_snakemake_lint_reports_only_the_explained_lints():
    res = run_snakemake("--lint")
    text = res.stdout + res.stderr
    found = lints(text)
    assert found, f"no lint parsed: did snakemake --lint run?\n{text[-2000:]}"
    new = {lint for lint in found if lint not in ACCEPTED_LINTS and lint[2] != ANY_RULE}
    assert not new, f"new snakemake --lint findings (fix them, or explain each where it fires): {sorted(new)}"
    assert not any("Specify a conda environment" in title for _, _, title in found)


def test_imports_are_sorted():
    """stdlib, third party, then electra_ds, each block sorted (pyproject.toml's [tool.ruff]; ruff is a dev extra).
    Fix with `ruff check --select I --fix electra_ds benchmarks tests`."""
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "I", "--no-cache", "electra_ds",
                          "benchmarks", "tests"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_every_rule_declares_the_shared_conda_environment():
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        text = smk.read_text()
        rules = re.findall(r"^rule (\w+):\n((?:    .*\n|\n)+)", text, flags=re.M)
        for name, body in rules:
            assert 'conda:\n        "../envs/electra-ds.yaml"' in body, f"{smk.name}: rule {name} declares no conda env"
    assert ENV_FILE.is_file() and (REPO / "workflow/envs/electra-ds.post-deploy.sh").is_file()


@pytest.fixture
def fake_tools(tmp_path):
    """`conda` and `apptainer` that answer only the version and info queries a dry run makes (nothing is
    installed or pulled): enough for Snakemake to plan with --software-deployment-method on a machine without them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "conda").write_text(
        "#!/bin/sh\ncase \"$*\" in\n"
        "  --version) echo 'conda 24.11.0';;\n"
        "  'info --json') echo '{\"conda_version\": \"24.11.0\", \"platform\": \"linux-64\", "
        "\"root_prefix\": \"/opt/conda\", \"conda_prefix\": \"/opt/conda\", \"envs_dirs\": [], \"pkgs_dirs\": []}';;\n"
        "  'config --get channel_priority --json') echo '{\"get\": {\"channel_priority\": \"strict\"}}';;\n"
        "  *) echo \"fake conda: $*\" >&2; exit 1;;\nesac\n")
    (bin_dir / "apptainer").write_text(
        "#!/bin/sh\n[ \"$*\" = --version ] && echo 'apptainer version 1.3.4' && exit 0\n"
        "echo \"fake apptainer: $*\" >&2; exit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return str(bin_dir)


def test_dry_run_plans_the_conda_environment_and_the_container(fake_tools, tmp_path):
    results = f"results_dir={tmp_path / 'results'}"
    conda = run_snakemake("-n", "--sdm", "conda", "--config", results, path_prepend=fake_tools)
    assert conda.returncode == 0, conda.stderr[-3000:]
    assert "Conda environment workflow/envs/electra-ds.yaml will be created." in conda.stdout + conda.stderr

    image = "docker://registry.example/electra-ds:0.1.0"
    apptainer = run_snakemake("-n", "--sdm", "apptainer", "--config", results, f"container={image}",
                              path_prepend=fake_tools)
    assert apptainer.returncode == 0, apptainer.stderr[-3000:]
    assert f"Singularity image {image} will be pulled." in apptainer.stdout + apptainer.stderr


def test_environment_files_match_the_makefile_and_pyproject():
    torch_spec = re.search(r"^TORCH_SPEC \?= (\S+)$", (REPO / "Makefile").read_text(), flags=re.M)[1]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def pip_section(path):
        spec = yaml.safe_load(path.read_text())
        assert "pytorch" not in spec["channels"] and "conda-forge" in spec["channels"], path
        return next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))

    assert pip_section(REPO / "environment.yml") == [torch_spec, "-e .[dev]"]
    expected = [torch_spec if re.match(r"torch\b", dep) else dep for dep in project["dependencies"]]
    assert pip_section(ENV_FILE) == expected
    for image in (REPO / "containers/Dockerfile", REPO / "containers/electra-ds.def"):
        assert torch_spec in image.read_text(), image


def test_slurm_latency_wait_holds_and_local_runs_keep_snakemakes_default():
    from snakemake import cli

    assert "latency-wait" not in yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    cwd = os.getcwd()
    os.chdir(REPO)  # profiles/default is found from the working directory
    try:
        assert cli.parse_args(["-n", "--profile", "profiles/slurm"])[1].latency_wait == 60
        assert cli.parse_args(["-n"])[1].latency_wait == 5
    finally:
        os.chdir(cwd)


def test_checkout_guard_reports_new_paths_outside_tool_caches(tmp_path):
    (tmp_path / "kept.txt").write_text("x")
    (tmp_path / ".venv").mkdir()
    before = checkout_guard.snapshot(tmp_path)
    (tmp_path / "mlartifacts" / "run1").mkdir(parents=True)
    (tmp_path / "mlartifacts" / "run1" / "r.json").write_text("{}")
    (tmp_path / "mlflow.db").write_text("")
    (tmp_path / ".venv" / "lib.py").write_text("")
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    assert checkout_guard.new_paths(before, checkout_guard.snapshot(tmp_path)) == ["mlartifacts/", "mlflow.db", "pkg/"]
