"""plait's folders sit at the repository root (``package-dir = {"plait" = "."}``), so from the
root (``python -m pytest``, ``python -c``, a worker started there) each folder is also a
top-level import name. One must never shadow an installed distribution's module of the same
name: transformers 5.25 requires Hugging Face's ``kernels`` and imports it while loading a model,
and found ``kernels/`` here instead. That folder is therefore a namespace package (no
``__init__.py``): the path finder prefers a regular package anywhere on ``sys.path`` to a
namespace portion, so ``import kernels`` finds the installed one, while ``plait.kernels`` still
resolves inside plait, and the wheel still carries it.
"""

from __future__ import annotations

import glob
import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _plait_folders() -> list[str]:
    """The repository-root folders that are plait subpackages (``plait.<name>``)."""
    return sorted(p.name for p in ROOT.iterdir() if p.is_dir() and any(p.glob("*.py")))


def _imported_from(name: str) -> str:
    """Where ``import name`` resolves from the repository root, as ``python -c`` there sees it."""
    code = f"import importlib.util as u; s = u.find_spec({name!r}); print(list(s.submodule_search_locations or [s.origin]))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout


def test_no_root_folder_shadows_an_installed_module() -> None:
    installed = importlib.metadata.packages_distributions()
    clashes = [name for name in _plait_folders() if name in installed]
    for name in clashes:
        where = _imported_from(name)
        assert str(ROOT) not in where, (
            f"from the repo root, `import {name}` finds plait's folder ({where.strip()}), not "
            f"the installed {installed[name]}: make the folder a namespace package or rename it"
        )


def test_kernels_resolves_to_huggingface_and_plait_kernels_to_plait() -> None:
    if "kernels" not in importlib.metadata.packages_distributions():
        pytest.skip("Hugging Face's kernels is not installed")
    assert str(ROOT) not in _imported_from("kernels")
    code = "import plait.kernels.cpu_decode as m; print(m.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(ROOT / "kernels" / "cpu_decode.py")


def test_wheel_carries_the_namespace_folder(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = glob.glob(str(tmp_path / "*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"plait/kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")}
    assert expected | {"plait/kernels/cpu_decode.c"} <= names
