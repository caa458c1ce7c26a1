"""Every ```python block in docs/ whose first line is ``# test: run`` runs,
as a script in a fresh process, with a private $CLUSTER_LAUNCHER_DIR."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(# test: run\n.*?)^```", re.S | re.M)


def examples() -> list:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for number, match in enumerate(BLOCK.finditer(page.read_text()), 1):
            found.append(pytest.param(match.group(1), id=f"{page.relative_to(DOCS)}#{number}"))
    return found


@pytest.mark.parametrize("code", examples())
def test_doc_example_runs(code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "CLUSTER_LAUNCHER_DIR": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def test_examples_are_found():
    assert len(examples()) >= 2


def test_readme_main_job_runs(tmp_path):
    """The README's first command runs examples/monte_carlo_pi.py; here with fewer darts."""
    example = DOCS.parent / "examples" / "monte_carlo_pi.py"
    code = (f"import runpy; main = runpy.run_path({str(example)!r})['main']\n"
            "pi = main(engines=2, darts=400_000, chunks=8)\n"
            "assert abs(pi - 3.14159) < 0.05, pi\n")
    env = {**os.environ, "CLUSTER_LAUNCHER_DIR": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pi ~= 3.1" in done.stdout and "on 2 engines" in done.stdout


@pytest.mark.parametrize("system, first_directive", [("slurm", "#SBATCH"), ("sge", "#$")])
def test_batch_pages_scripts_are_the_plugins_golden_dry_runs(system, first_directive):
    """docs/batch.md shows what the plugins submit: each shown script is the
    job script of the plugin's golden dry run (which its own tests check)."""
    blocks = re.findall(r"^```text\n(.*?)^```", (DOCS / "batch.md").read_text(), re.S | re.M)
    (shown,) = [block for block in blocks if block.startswith(f"#!/bin/sh\n{first_directive} ")]
    golden = DOCS.parent / "plugins" / "launchers" / system / "tests" / "golden" / "engines.txt"
    script = golden.read_text().split("\n", 2)[2].rsplit("---\n", 1)[0]  # between the '--- path' and '---' lines
    assert shown == script
