"""The package works after a real (non-editable) install: the built-in search spaces ship
inside the wheel as ``wpl_nas/search_spaces/*.yaml`` and are found from there.

An editable install or a source checkout finds ``search_spaces/`` at the top of the
repository, so only a built wheel shows whether the packaging configuration ships them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILTIN = ("mnist1d", "nb201")

# What the build must not see: version control, environments, caches, earlier build outputs
# (a stale build/lib would end up in the wheel and hide a packaging mistake) and run data.
_NOT_SOURCES_AT_ROOT = {".git", ".venv", "venv", "build", "dist", ".mypy_cache", ".pytest_cache", ".ruff_cache",
                        "runs", "data", "tests"}
_NOT_SOURCES_ANYWHERE = shutil.ignore_patterns("*.egg-info", "__pycache__", "*.pyc")


def _not_sources(directory: str, names: list[str]) -> set[str]:
    ignored = set(_NOT_SOURCES_ANYWHERE(directory, names))
    if Path(directory).resolve() == REPO_ROOT:
        ignored |= _NOT_SOURCES_AT_ROOT & set(names)
    return ignored


def _run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, (
        f"command failed ({proc.returncode}): {' '.join(args)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc.stdout


@pytest.mark.slow
def test_builtin_spaces_are_found_after_a_wheel_install(tmp_path: Path) -> None:
    assert (REPO_ROOT / "pyproject.toml").is_file(), REPO_ROOT
    # Build from a clean copy of the sources, so the checkout gets no build/ or egg-info and
    # nothing left over from an earlier build can stand in for a file the wheel lacks.
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=_not_sources)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(wheels), str(source)], cwd=tmp_path)
    built = sorted(wheels.glob("wpl_nas-*.whl"))
    assert len(built) == 1, f"expected one wpl_nas wheel, got {built}"
    wheel = built[0]

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in BUILTIN:
        assert f"wpl_nas/search_spaces/{name}.yaml" in names, (
            f"wpl_nas/search_spaces/{name}.yaml is missing from {wheel.name}; it ships: "
            f"{sorted(n for n in names if not n.endswith('.py'))}"
        )

    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
         cwd=tmp_path)

    # A fresh interpreter in an unrelated directory, with only the install target added: the
    # checkout is not on sys.path, so every file must come from the installed package.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = textwrap.dedent(
        f"""
        from pathlib import Path
        import wpl_nas

        site = Path({str(site)!r}).resolve()
        where = Path(wpl_nas.__file__).resolve()
        assert site in where.parents, f"wpl_nas imported from {{where}}, not from {{site}}"
        spaces = wpl_nas.builtin_spaces()
        for name in {BUILTIN!r}:
            assert name in sorted(spaces), f"{{name}} not in {{sorted(spaces)}}"
            assert site in spaces[name].resolve().parents, spaces[name]
        assert wpl_nas.load_space("nb201").size == 15625
        assert wpl_nas.load_space("mnist1d").size == 3 ** 6
        print("ok", where)
        """
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    env["PYTHONNOUSERSITE"] = "1"
    out = _run([sys.executable, "-c", check], cwd=elsewhere, env=env)
    assert out.startswith("ok")
