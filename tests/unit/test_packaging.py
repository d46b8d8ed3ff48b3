"""What `pip install .` needs on a fresh Debian 12 machine without a compiler (issue 22 item 6):
every dependency comes as a wheel for this Python, none is a package nothing imports, and each
is pinned to the major version the suite runs on."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement

from helpers import REPO

DEPENDENCIES = [Requirement(text) for text in
                tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
# Distribution name -> the module the code imports it as.
MODULES = {"pynetdicom": "pynetdicom", "pydicom": "pydicom", "peewee": "peewee", "tomlkit": "tomlkit",
           "pyroute2": "pyroute2", "dbus-fast": "dbus_fast", "psycopg": "psycopg"}


def test_every_dependency_installs_from_a_wheel(tmp_path):
    """No sdist to build: pip may take binary distributions only and still resolves each one."""
    for requirement in DEPENDENCIES:
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
                              "--dest", str(tmp_path), str(requirement)], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{requirement} has no wheel for this Python:\n{run.stderr}"


def test_every_dependency_is_imported_and_pinned_to_the_tested_major():
    sources = "\n".join(p.read_text() for package in ("appliance", "service_tool") for p in (REPO / package).rglob("*.py"))
    for requirement in DEPENDENCIES:
        module = MODULES[requirement.name]
        assert f"import {module}" in sources or f"from {module}" in sources, f"nothing imports {requirement.name}"
        installed = version(requirement.name)
        major = int(installed.split(".")[0])
        assert requirement.specifier.contains(installed), (requirement, installed)
        assert not requirement.specifier.contains(f"{major + 1}.0"), f"{requirement} admits the next major"
        assert major == 0 or not requirement.specifier.contains(f"{major - 1}.99"), \
            f"{requirement} admits an older major than the tested {installed}"
