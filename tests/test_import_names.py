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

import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _root_import_names() -> list[str]:
    """The repository-root folders holding Python files: each is an import name from the root."""
    return sorted(p.name for p in ROOT.iterdir() if p.is_dir() and any(p.glob("*.py")))


def _python_at_root(code: str) -> str:
    """What ``python -c code`` prints, run from the repository root."""
    cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_no_root_folder_shadows_an_installed_module() -> None:
    installed = importlib.metadata.packages_distributions()
    for name in (n for n in _root_import_names() if n in installed):
        where = _python_at_root(
            f"import importlib.util as u; s = u.find_spec({name!r}); "
            "print(list(s.submodule_search_locations or [s.origin]))"
        )
        assert str(ROOT) not in where, (
            f"from the repo root, `import {name}` finds plait's folder ({where.strip()}), not "
            f"the installed {installed[name]}: make the folder a namespace package or rename it"
        )


def test_plait_kernels_resolves_inside_plait() -> None:
    out = _python_at_root("import plait.kernels.cpu_decode as m; print(m.__file__)")
    assert out.strip() == str(ROOT / "kernels" / "cpu_decode.py")


def test_wheel_carries_the_namespace_folder(tmp_path: Path) -> None:
    # setuptools' build directory in tmp_path, not the checkout's build/: a wheel copies all of
    # build/lib, so files an earlier build left there would pass this test for a package no
    # longer listed
    cfg = tmp_path / "build.cfg"
    cfg.write_text(f"[build]\nbuild_base = {tmp_path / 'build'}\n")
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        env={**os.environ, "DIST_EXTRA_CONFIG": str(cfg)},
    )
    (wheel,) = out.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"plait/kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")}
    assert expected | {"plait/kernels/cpu_decode.c"} <= names
