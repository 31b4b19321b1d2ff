"""Packaging: the two environment files pin the same packages, notebooks keep a parameters cell, ruff passes."""
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_conda_env_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {p for p in pip if "==" in p} == pins
    assert "torch==2.13.0" in pins


def test_python_sources_pass_ruff():
    """Line length 120 and pyflakes (undefined names, unused imports) over lib/, tests/ and benchmarks/;
    the settings are in pyproject.toml."""
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "lib", "tests", "benchmarks"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_notebook_has_a_parameters_cell_first():
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell is not 'parameters'"
        assert "profile = None" in code[0].source, path.name


def test_no_committed_notebook_pins_a_profile():
    """A published notebook must not keep papermill's injected-parameters cell (`profile = "cpu"`): nbval would then
    run it in the cpu profile instead of $WORKBOOK_PROFILE (smoke). lib.run's --publish strips it."""
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert not injected, f"{path.name}: has papermill's injected-parameters cell; copy notebooks/, not reports/"
