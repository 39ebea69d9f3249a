"""transformers' own model-test mixins, taken from the source distribution of the installed version.

``ModelTesterMixin`` (tests/test_modeling_common.py) and ``ConfigTester``
(tests/test_configuration_common.py) ship in the transformers sdist on PyPI, not in the wheel. At
test time :func:`load_transformers_test_modules` downloads that sdist once with pip
(``pip download --no-deps --no-binary :all: transformers==<installed version>``), extracts the two
files into ``~/.cache/flythinker/transformers-<version>-tests/`` (``$FLYTHINKER_CACHE`` overrides
``~/.cache/flythinker``) and imports them as the package ``transformers_tests_<version>``; reruns read
the cache. Nothing is copied into this repository.

The two files import three modules the sdist does not ship; they are stubbed:
``generation.test_utils.GenerationTesterMixin`` and ``exporters.test_export.ExportTesterMixin``
(empty mixins: our own tests cover generation and export) and
``utils.test_configuration_utils.config_common_kwargs`` (``{}``: ``ConfigTester`` uses it only for
configs without sub-configs, and FlyThinkerConfig has two).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

FILES = ("test_modeling_common.py", "test_configuration_common.py")


class SourcesUnavailable(RuntimeError):
    """The sdist could not be downloaded or read (offline, no index, or an unexpected layout)."""


def cache_root() -> Path:
    return Path(os.environ.get("FLYTHINKER_CACHE", Path.home() / ".cache" / "flythinker"))


def _package_name(version: str) -> str:
    return "transformers_tests_" + version.replace(".", "_").replace("+", "_")


def _fetch(version: str, target: Path) -> None:
    """Download the sdist with pip and extract :data:`FILES` into ``target`` (atomically)."""
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"transformers=={version}",
            "-d",
            tmp,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise SourcesUnavailable(
                f"pip download of the transformers {version} sdist failed: {error}"
            ) from error
        archives = sorted(Path(tmp).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or not archives:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise SourcesUnavailable(
                f"could not download the transformers {version} source distribution (offline or no package "
                f"index?): {' | '.join(tail)}"
            )
        staging = Path(tmp) / "package"
        staging.mkdir()
        with tarfile.open(archives[0]) as archive:
            members = {
                Path(m.name).name: m
                for m in archive.getmembers()
                if Path(m.name).parent.name == "tests" and Path(m.name).parent.parent.parent == Path(".")
            }
            missing = [name for name in FILES if name not in members]
            if missing:
                raise SourcesUnavailable(f"{archives[0].name} has no tests/{missing[0]}")
            for name in FILES:
                (staging / name).write_bytes(archive.extractfile(members[name]).read())
        (staging / "__init__.py").write_text(
            '"""transformers\' tests/ (two files), fetched by flythinker\'s test suite."""\n'
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            staging.rename(target)
        except OSError:  # another process filled the cache first
            if not (target / FILES[0]).exists():
                raise


def _stub(name: str, **attributes) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__path__ = []  # importable as a package too, so submodules resolve
    sys.modules.setdefault(name, module)


def load_transformers_test_modules(version: str | None = None) -> tuple[types.ModuleType, types.ModuleType]:
    """(``test_modeling_common``, ``test_configuration_common``) of transformers ``version`` (default:
    the installed one). Raises :class:`SourcesUnavailable` when they cannot be fetched."""
    version = version or transformers.__version__
    package = _package_name(version)
    root = cache_root() / f"transformers-{version}-tests"
    if not all((root / package / name).exists() for name in FILES):
        _fetch(version, root / package)

    class GenerationTesterMixin:
        """Not in the sdist: flythinker's tests/modeling/test_transformers_mixins.py covers generation."""

    class ExportTesterMixin:
        """Not in the sdist: torch.export of forward is tested in flythinker's own suite."""

    for sub in ("generation", "exporters", "utils"):
        _stub(f"{package}.{sub}")
    _stub(f"{package}.generation.test_utils", GenerationTesterMixin=GenerationTesterMixin)
    _stub(f"{package}.exporters.test_export", ExportTesterMixin=ExportTesterMixin)
    _stub(f"{package}.utils.test_configuration_utils", config_common_kwargs={})
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        modeling = importlib.import_module(f"{package}.test_modeling_common")
        configuration = importlib.import_module(f"{package}.test_configuration_common")
    except ImportError as error:
        raise SourcesUnavailable(
            f"transformers {version}'s test mixins do not import here: {error}"
        ) from error
    return modeling, configuration
