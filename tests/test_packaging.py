"""The set-up files agree with each other: pins, conda file, compose file, CI entry point."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from labkit.server.docker import EMBEDDED_HINT, container, docker_engine

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    name = re.split(r"[<>=;\[ ]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 normalised


LOCKED_EXTRAS = ("dev", "docker", "book")  # `embeddings` (torch) is installed by `make embeddings`, outside the lock


def _declared(extras: tuple[str, ...] = LOCKED_EXTRAS) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    reqs = project["dependencies"] + [r for name in extras for r in optional[name]]
    return {_name(r) for r in reqs}


def test_every_extra_is_locked_or_installed_by_its_own_target():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert extras - set(LOCKED_EXTRAS) == {"embeddings"}
    makefile, ci = (ROOT / "Makefile").read_text(), (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in makefile and ".[embeddings]" in makefile and "make test-embeddings" in ci
    assert ".[book]" in makefile and "make test-book" in ci  # `make book` installs its extra itself


def test_lock_pins_every_declared_dependency_exactly():
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            assert "==" in line, f"not an exact pin: {line}"
            pins[_name(line)] = line
    assert _declared() <= set(pins), _declared() - set(pins)


def test_environment_yml_lists_the_same_dependencies_with_a_comment_each():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    listed |= {_name(d) for d in env["dependencies"][-1]["pip"] if not d.startswith("-")}
    assert _declared(("dev",)) <= listed | {"python"}  # docker and book: installed by their own commands
    deps = (ROOT / "environment.yml").read_text().split("dependencies:", 1)[1]
    for line in deps.splitlines():
        if re.match(r"\s+- (?!pip:?$|-)[a-z]", line) and "python>=" not in line:
            assert "#" in line, f"no comment saying what uses it: {line.strip()}"


def test_compose_binds_loopback_with_passwords_and_healthchecks():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert {"valkey", "redis-stack"} <= set(services)
    assert services["valkey"]["image"].startswith("valkey/valkey-bundle")
    for service in services.values():
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])
        assert "--requirepass" in " ".join(service["environment"].values())
        assert "healthcheck" in service


def test_ci_calls_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme


def test_docker_path_fails_at_once_naming_the_embedded_default():
    ok, _ = docker_engine()
    if ok:
        pytest.skip("a Docker engine runs here; this test covers machines without one")
    import labkit

    with pytest.raises(labkit.DockerUnavailable) as err:
        container("valkey")
    assert "no Docker engine" in str(err.value) and EMBEDDED_HINT in str(err.value)


def test_package_data_ships_every_lua_script_and_data_file():
    """A wheel carries only what `[tool.setuptools.package-data]` names: every script and data file must match."""
    from fnmatch import fnmatch

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["labkit"]
    package = ROOT / "labkit"
    files = [p.relative_to(package).as_posix() for d in ("lua", "data") for p in (package / d).rglob("*")
             if p.is_file()]
    assert any(f.count("/") == 2 for f in files), "expected scripts in lua/<module>/"
    missing = [f for f in files if not any(fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert not missing, f"not in the wheel: {missing}; add a glob to package-data"
