"""Installable anywhere: a built wheel, in a fresh venv, run from another directory, needs no OTB_REGISTRY."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from ..conftest import ROOT

pytestmark = pytest.mark.e2e

LEFT_OUT = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout (the symlinked registry kept as a link), installed in a new venv."""
    work = tmp_path_factory.mktemp("install")
    src = work / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=LEFT_OUT)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(src)]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    wheel = next((work / "dist").glob("opentoken_batch-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        packaged = zf.read("worker/registry.json")
        scripts = {name for name in zf.namelist() if name.startswith("worker/lua/")}
    assert scripts == {f"worker/lua/{p.name}" for p in (ROOT / "worker" / "lua").glob("*.lua")}, scripts
    assert hashlib.sha256(packaged).digest() == hashlib.sha256((ROOT / "registry.json").read_bytes()).digest()
    venv.create(work / "venv", with_pip=True)
    subprocess.run([str(work / "venv" / "bin" / "pip"), "install", "-q", str(wheel)], check=True, capture_output=True,
                   timeout=600)
    return work / "venv" / "bin"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("OTB_", "REDIS_URL", "ANTHROPIC", "GEMINI", "PYTHONPATH", "VIRTUAL_ENV"))}


def test_otb_demo_runs_from_another_directory(installed, tmp_path):
    proc = subprocess.run([str(installed / "otb"), "demo"], cwd=tmp_path, env=clean_env(), capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "requests  9 total" in out and "ERROR model_not_found" in out  # (which models succeed depends on the day)
    assert str(ROOT) not in proc.stderr.decode()  # the installed package, not this checkout


def test_models_version_and_the_python_api_from_another_directory(installed, tmp_path):
    env = clean_env()
    models = subprocess.run([str(installed / "otb"), "models"], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert models.returncode == 0 and "google/gemini-3-flash" in models.stdout.decode(), models.stderr.decode()
    version = subprocess.run([str(installed / "otb"), "--version"], cwd=tmp_path, env=env, capture_output=True)
    assert version.stdout.decode().startswith("otb, version ")
    worker = subprocess.run([str(installed / "otb"), "worker"], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert worker.returncode == 1 and "REDIS_URL is not set" in worker.stderr.decode()
    code = "from producer import Client\ntry:\n    Client.from_env()\nexcept Exception as e:\n    print(type(e).__name__, e)"
    api = subprocess.run([str(installed / "python"), "-c", code], cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert api.stdout.decode().startswith("ConfigError REDIS_URL is not set"), api.stderr.decode()
