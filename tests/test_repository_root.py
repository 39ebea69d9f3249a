"""The repository root is safe to stand in: its source folders never shadow installed packages.

``python -m ...``, ``python -c`` and pytest (``pythonpath = ["."]``) put the root first on
``sys.path``. transformers ≥ 5.25 imports the HF ``kernels`` package unconditionally, so a regular
package ``kernels/`` in the root broke every command run there (``cannot import name
'CUDAProperties' from 'kernels'``). The folders ``kernels/``, ``modeling/`` and ``train/`` are
mapped into ``flythinker.*`` (pyproject's package-dir; links under ``flythinker/`` in a checkout)
and hold no ``__init__.py``, so at the top level they are at most namespace portions, which lose to
any installed package of the same name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("kernels", "modeling", "train")  # top-level folder -> flythinker.<folder>


def _fake_site(tmp_path: Path) -> Path:
    """Regular packages named like the folders, standing in for installed distributions (the real
    HF ``kernels`` exports ``CUDAProperties``, which transformers imports by name)."""
    site = tmp_path / "site"
    for name in MAPPED:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"CUDAProperties = 'installed {name}'\n")
    return site


def _run(args: list[str], site: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH entries come after the root (sys.path[0]) and before site-packages: where an
    # installed package sits relative to the root
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two fresh interpreters that import torch and transformers
def test_installed_packages_win_over_the_root_folders_and_flythinker_still_imports(tmp_path):
    site = _fake_site(tmp_path)
    code = textwrap.dedent(
        """
        from kernels import CUDAProperties
        import modeling, train
        print(CUDAProperties, modeling.CUDAProperties, train.CUDAProperties, sep="|")
        import flythinker
        from flythinker import FlyThinkerForCausalLM
        from flythinker.kernels.injection import latent_injection
        from flythinker.train.readers import read_records
        print(FlyThinkerForCausalLM.__name__)
        """
    )
    result = _run([sys.executable, "-c", code], site)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "installed kernels|installed modeling|installed train"
    assert lines[-1] == "FlyThinkerForCausalLM"

    cli = _run([sys.executable, "-m", "flythinker.cli", "--help"], site)
    assert cli.returncode == 0 and "usage: flythinker" in cli.stdout, cli.stderr[-3000:]


def test_source_folders_are_not_regular_packages_and_the_checkout_package_is_whole():
    for name in MAPPED:
        assert not (ROOT / name / "__init__.py").exists(), (
            f"{name}/__init__.py makes the root folder a package that shadows an installed '{name}'"
        )
        link = ROOT / "flythinker" / name
        assert link.resolve() == (ROOT / name).resolve(), f"flythinker/{name} must link to ../{name}"
