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

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("kernels", "modeling", "train")  # top-level folder -> flythinker.<folder>


def _fake_site(tmp_path: Path) -> Path:
    """Regular packages named like the folders, standing in for installed distributions where none is
    installed (the real HF ``kernels`` exports ``CUDAProperties``, which transformers imports by name)."""
    site = tmp_path / "site"
    for name in MAPPED:
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(f"CUDAProperties = 'installed {name}'\n")
    return site


@pytest.mark.slow  # two fresh interpreters that import torch and transformers
def test_installed_packages_win_over_the_root_folders_and_flythinker_still_imports(tmp_path):
    # The stand-ins go last on sys.path, after site-packages: a really installed package (HF kernels
    # with transformers >= 5.25) is found first, a stand-in where there is none. Either way the root,
    # which is sys.path[0] under ``python -c`` and ``python -m``, must lose.
    site = _fake_site(tmp_path)
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.append({str(site)!r})
        from kernels import CUDAProperties
        import kernels, modeling, train
        print(*(m.__file__ for m in (kernels, modeling, train)), sep="|")
        import flythinker
        from flythinker import FlyThinkerForCausalLM
        from flythinker.kernels.injection import latent_injection
        from flythinker.train.readers import read_records
        print(FlyThinkerForCausalLM.__name__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    for name, file in zip(MAPPED, lines[0].split("|")):
        assert file != "None" and Path(file).resolve().parent != (ROOT / name).resolve(), f"{name}: {file}"
    assert lines[-1] == "FlyThinkerForCausalLM"

    cli = subprocess.run(
        [sys.executable, "-m", "flythinker.cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0 and "usage: flythinker" in cli.stdout, cli.stderr[-3000:]


def test_source_folders_are_not_regular_packages_and_the_checkout_package_is_whole():
    for name in MAPPED:
        assert not (ROOT / name / "__init__.py").exists(), (
            f"{name}/__init__.py makes the root folder a package that shadows an installed '{name}'"
        )
        link = ROOT / "flythinker" / name
        assert link.resolve() == (ROOT / name).resolve(), f"flythinker/{name} must link to ../{name}"


def test_nothing_imports_a_name_from_the_namespace_packages():
    """``flythinker.kernels`` / ``.modeling`` / ``.train`` have no ``__init__``: ``from
    flythinker.modeling import FlyThinkerForCausalLM`` fails at run time, also inside a function that
    no test calls. Import from the defining module (or the user-facing names from ``flythinker``)."""
    bad = []
    for folder in ("flythinker", *MAPPED, "bench", "tests", "scripts", "serving"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if any(part.startswith(".") for part in path.relative_to(ROOT).parts):
                continue  # virtual environments and caches
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.ImportFrom)
                    and node.level == 0
                    and node.module in {f"flythinker.{name}" for name in MAPPED}
                ):
                    folder_of = ROOT / node.module.split(".")[1]
                    for alias in node.names:
                        if not (folder_of / f"{alias.name}.py").is_file():
                            bad.append(
                                f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {alias.name}"
                            )
    assert not bad, "names imported from a namespace package:\n" + "\n".join(bad)


def test_every_subpackage_is_in_the_wheel():
    """pyproject.toml lists packages by name: a new ``flythinker/<pkg>/__init__.py`` left out of the list
    is missing from the wheel (``flythinker --help`` died on ``flythinker.commands`` in the release smoke)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(root).parts)
        for init in (root / "flythinker").rglob("__init__.py")
        if not {"kernels", "modeling", "train"} & set(init.parent.relative_to(root).parts[1:2])
    }
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
