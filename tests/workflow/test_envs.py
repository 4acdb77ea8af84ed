"""The pinned environments agree: envs/prdit.yaml (conda, for Snakemake) and requirements.lock (pip)."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.support.project import ROOT


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[_norm(name)] = version
    return pins


def conda_pip_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "envs" / "prdit.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = {}
    for spec in pip:
        name, _, version = spec.partition("==")
        assert version, f"envs/prdit.yaml: {spec!r} is not pinned with =="
        pins[_norm(name)] = version
    return pins


def test_conda_env_pins_equal_the_pip_lock() -> None:
    lock, conda = lock_pins(), conda_pip_pins()
    for name, version in conda.items():
        assert lock.get(name) == version, (
            f"{name}: envs/prdit.yaml has {version}, requirements.lock {lock.get(name)}"
        )


def test_every_direct_dependency_is_pinned_in_both() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lock, conda = lock_pins(), conda_pip_pins()
    for dep in deps:
        name = _norm(re.split(r"[<>=!~ \[;]", dep)[0])
        assert name in lock, f"{name} missing from requirements.lock"
        assert name in conda, f"{name} missing from envs/prdit.yaml"


def test_torch_is_the_exact_release_that_installs_without_a_cuda_download() -> None:
    assert lock_pins()["torch"] == "2.13.0"
    assert conda_pip_pins()["torch"] == "2.13.0"
    assert "torchvision" not in lock_pins() and "timm" not in lock_pins()
