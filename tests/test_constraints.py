"""constraints.txt: the versions the suite last passed with, used by ./run-tests, the local
.venv of the launchers and both Docker images (tests/docker builds the images with them)."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO
from nima import launch

# pip leaves these out of `pip freeze`; they are the installer, not what it installs.
INSTALLER = {"pip", "setuptools", "wheel", "distribute"}


def pins(path: Path = REPO / "constraints.txt") -> dict[str, Version]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: {line!r} is not NAME==VERSION"
        assert canonicalize_name(name) not in found, f"constraints.txt pins {name} twice"
        found[canonicalize_name(name)] = Version(version)
    return found


def test_every_requirement_of_the_package_is_pinned_within_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = pins()
    requirements = [*project["dependencies"],
                    *(r for extra in project["optional-dependencies"].values() for r in extra)]
    assert len(requirements) >= 15
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} (pyproject.toml) has no pin in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pinned[name]}, outside {req.specifier}")


@pytest.mark.skipif(os.environ.get("NIMA_TEST_PINNED") != "1",
                    reason="./run-tests did not install constraints.txt (another Python or "
                           "platform, or pytest run outside ./run-tests)")
def test_the_suite_runs_on_exactly_the_pinned_versions():
    pinned = pins()
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version)
                 for d in importlib.metadata.distributions()}
    installed = {k: v for k, v in installed.items() if k not in INSTALLER and k != "nima"}
    unpinned = sorted(set(installed) - set(pinned))
    assert not unpinned, f"installed but not pinned: {unpinned} (refresh constraints.txt)"
    missing = sorted(set(pinned) - set(installed))
    assert not missing, f"pinned but not installed by ./run-tests: {missing}"
    other = {k: (str(installed[k]), str(pinned[k])) for k in pinned if installed[k] != pinned[k]}
    assert not other, f"installed (left) differs from constraints.txt (right): {other}"


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A minimal pure-Python wheel, written as the wheel spec describes it."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": "\n".join(["Metadata-Version: 2.1", f"Name: {name}",
                                       f"Version: {version}",
                                       *(f"Requires-Dist: {r}" for r in requires)]) + "\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


@pytest.fixture
def index(tmp_path: Path, monkeypatch) -> Path:
    """A local package index (pip --find-links) with pinme 1.0 and 2.0 and app needing pinme;
    pip sees nothing else."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "pinme", "1.0")
    _wheel(wheels, "pinme", "2.0")
    _wheel(wheels, "app", "1.0", requires=("pinme>=1",))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return tmp_path


def _installed(site: Path) -> set[str]:
    return {p.name for p in site.glob("*.dist-info")}


def test_launcher_installs_the_pinned_versions(index: Path, capsys):
    repo = index / "repo"
    repo.mkdir()
    (repo / "constraints.txt").write_text("# tested\npinme==1.0\n")
    site = index / "site"
    launch.pip_install(Path(sys.executable), ["--target", str(site), "app"], "predict", repo)
    assert _installed(site) == {"app-1.0.dist-info", "pinme-1.0.dist-info"}
    assert "constraints.txt" not in capsys.readouterr().err


def test_launcher_falls_back_to_the_newest_versions_when_pins_cannot_install(index: Path,
                                                                             capfd):
    repo = index / "repo"
    repo.mkdir()
    (repo / "constraints.txt").write_text("pinme==3.0\n")  # not in the index
    site = index / "site"
    launch.pip_install(Path(sys.executable), ["--target", str(site), "app"], "predict", repo)
    assert _installed(site) == {"app-1.0.dist-info", "pinme-2.0.dist-info"}
    err = capfd.readouterr().err
    assert (f"predict: the tested versions of {repo / 'constraints.txt'} do not install here; "
            "installing the newest versions pyproject.toml allows") in err


def test_launcher_without_constraints_installs_the_newest(index: Path):
    repo = index / "repo"
    repo.mkdir()
    site = index / "site"
    launch.pip_install(Path(sys.executable), ["--target", str(site), "app"], "predict", repo)
    assert _installed(site) == {"app-1.0.dist-info", "pinme-2.0.dist-info"}
