"""The deployment files match the code: Dockerfile, deploy/compose.yaml, Kubernetes manifests.

No Docker engine or cluster runs here, so these tests read the files and hold them against
what the services actually read: every AP_* variable must be a field of the settings class
the service loads (a renamed setting fails here), ports, health checks and probes must hit
the port the service listens on, and commands must be ones `ap-service` knows.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from agentplatform.v1 import profile_service_pb2
from pydantic_settings import BaseSettings

from devtools.processes import Service, free_port, wait_http_ok
from services.__main__ import COMMANDS
from services.control_plane.bootstrap import build_parser as build_bootstrap_parser
from services.control_plane.settings import ControlPlaneSettings
from services.gateway.app import GatewaySettings
from services.migrate import SCHEMAS
from services.rpc.db import role_dsn
from services.rpc.hosted_models import HostedModelSettings
from services.rpc.settings import ServiceSettings
from services.vault.settings import VaultSettings
from services.web.settings import WebSettings
from services.worker.settings import WorkerSettings
from tests.harness import start_stack

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes" / "base"

# What each long-running command loads; the first class is the one with its port settings.
SETTINGS: dict[str, tuple[type[BaseSettings], ...]] = {
    "control_plane": (ControlPlaneSettings, HostedModelSettings),
    "worker": (WorkerSettings, HostedModelSettings),
    "vault": (VaultSettings,),
    "gateway": (GatewaySettings,),
    "web": (WebSettings,),
}
# The HTTP edge serves HTTP (its health: /readyz and /healthz); the others serve gRPC health.
GRPC_COMMANDS = [command for command in SETTINGS if command != "web"]
# Settings without which a service refuses to start (or, for the worker, finds nothing; for
# the edge, its replicas share no sign-in).
REQUIRED = {
    "control_plane": {
        "AP_DATABASE_URL",
        "AP_INTERNAL_TOKEN",
        "AP_VAULT_ADDRESS",
        "AP_VAULT_ADMIN_TOKEN",
    },
    "worker": {"AP_INTERNAL_TOKEN", "AP_CONTROL_PLANE_ADDRESS"},
    "vault": {"AP_DATABASE_URL", "AP_VAULT_ADMIN_TOKEN", "AP_VAULT_RESOLVE_TOKEN"},
    "gateway": {"AP_DATABASE_URL", "AP_GATEWAY_ADMIN_TOKEN", "AP_GATEWAY_CALL_TOKEN"},
    "web": {"AP_CONTROL_PLANE_ADDRESS", "AP_COOKIE_SECRET"},
}
# Settings of which a service needs exactly one.
ONE_OF = {"vault": {"AP_VAULT_MASTER_KEY_FILE", "AP_VAULT_MASTER_KEYS"}}
# What `services.migrate` reads: the admin URL and one role password per schema.
MIGRATE_ENV = {"AP_DATABASE_URL"} | {f"AP_DB_PASSWORD_{s.schema.upper()}" for s in SCHEMAS}
ROLES = {s.schema: s.role for s in SCHEMAS}
# Room a stopping worker needs after its drain grace: handing unfinished runs back.
WORKER_RELEASE_MARGIN_S = 10
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
IGNORED_IN_BUILDS = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")


def env_names(settings: type[BaseSettings]) -> set[str]:
    """Return the environment variables a settings class reads."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    return {(prefix + name).upper() for name in settings.model_fields}


def load_settings(command: str, env: Mapping[str, str]) -> ServiceSettings:
    """Load a service's settings from exactly `env`, the way the service would."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("AP_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        loaded = [settings() for settings in SETTINGS[command]]
    service = loaded[0]
    assert isinstance(service, ServiceSettings)
    return service


def check_service_env(command: str, env: Mapping[str, str]) -> ServiceSettings:
    """Assert `env` holds only settings the service reads, and the ones it needs."""
    known = set().union(*(env_names(s) for s in SETTINGS[command]))
    unknown = {name for name in env if name.startswith("AP_")} - known
    assert not unknown, f"{command}: no such setting {sorted(unknown)}"
    missing = REQUIRED[command] - set(env)
    assert not missing, f"{command}: {sorted(missing)} not set"
    if command in ONE_OF:
        assert len(ONE_OF[command] & set(env)) == 1, f"{command}: set one of {ONE_OF[command]}"
    return load_settings(command, env)


def service_port(settings: ServiceSettings) -> int:
    """Return the port a service serves on: the edge's HTTP port, the others' gRPC port."""
    return settings.http_port if isinstance(settings, WebSettings) else settings.grpc_port


def assert_role_url(command: str, url: str) -> None:
    """Assert a service's database URL logs in as the service's own role."""
    user = re.match(r"postgres(?:ql)?://([^:@/]+)", url)
    assert user is not None, f"{command}: {url} names no user"
    assert user.group(1) == ROLES[command], f"{command} must connect as {ROLES[command]}"


# ── Dockerfile ──────────────────────────────────────────────────────────────────────────────


def dockerfile_stages() -> list[list[str]]:
    """Return the Dockerfile's instructions, continuation lines joined, split by stage."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def image_user() -> int:
    """Return the uid the image runs as."""
    (user,) = [i.split()[1] for i in dockerfile_stages()[-1] if i.upper().startswith("USER ")]
    return int(user.split(":")[0])


def test_image_is_multi_stage_and_runs_as_a_non_root_user_without_build_tools() -> None:
    """The runtime stage copies a finished venv, runs as a uid > 0 and installs nothing."""
    stages = dockerfile_stages()
    assert len(stages) >= 2
    runtime = " ".join(stages[-1])
    assert image_user() > 0
    assert "COPY --from=build /opt/ap /opt/ap" in runtime
    for tool in ("pip install", "apt-get", "gcc", "grpc_tools", "build-essential"):
        assert tool not in runtime, f"the runtime stage must not use {tool}"
    assert 'ENTRYPOINT ["ap-service"]' in runtime


def test_image_generates_stubs_with_the_repository_tool_versions() -> None:
    """The builder pins grpcio-tools and mypy-protobuf as pyproject's dev extra does."""
    build = " ".join(dockerfile_stages()[0])
    pyproject = (REPO / "pyproject.toml").read_text()
    for tool in ("grpcio-tools", "mypy-protobuf"):
        (spec,) = re.findall(rf'"({tool}[<>=!~][^"]*)"', pyproject)
        assert f'"{spec}"' in build, f"the image should install {spec}"


def test_image_exposes_every_service_port() -> None:
    """EXPOSE lists each service's default port (gRPC, or the edge's HTTP) and metrics port."""
    exposed = {
        int(port)
        for line in dockerfile_stages()[-1]
        if line.upper().startswith("EXPOSE ")
        for port in line.split()[1:]
    }
    for command in SETTINGS:
        settings = load_settings(command, {})
        assert {service_port(settings), settings.metrics_port} <= exposed, command


def test_every_image_command_runs_a_main() -> None:
    """Each `ap-service` command names a module with a main()."""
    for module in COMMANDS.values():
        assert callable(getattr(__import__(module, fromlist=["main"]), "main", None)), module


@pytest.mark.timeout(120)
def test_service_wheel_carries_migrations_and_the_entry_point(tmp_path: Path) -> None:
    """The wheel the image installs holds the migrations, the edge's files and `ap-service`."""
    # Built from a copy, so the build leaves nothing behind in the working tree.
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    for package in ("services", "ap_cli", "devtools"):
        shutil.copytree(REPO / package, source / package, ignore=IGNORED_IN_BUILDS)
    subprocess.run(
        [*PIP_WHEEL, "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("agentplatform-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for target in SCHEMAS:
        for sql in target.directory.glob("*.sql"):
            assert str(sql.relative_to(REPO)) in names
    web = REPO / "services" / "web"
    for served in [web / "openapi.json", *(p for p in (web / "static").rglob("*") if p.is_file())]:
        assert str(served.relative_to(REPO)) in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "ap-service = services.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


# ── docker compose ──────────────────────────────────────────────────────────────────────────


_VARIABLE = re.compile(r"\$\{(\w+)(?:(:-|:\?|-|\?)([^}]*))?\}")


def env_example() -> dict[str, str]:
    """Return the variables deploy/.env.example sets, with its example values."""
    lines = (DEPLOY / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def interpolate(value: str) -> str:
    """Resolve compose `${VAR:-default}` to its default, other `${VAR…}` as .env.example has it."""
    example = env_example()

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        return default if match.group(2) == ":-" else example.get(name, "from-env-file")

    return _VARIABLE.sub(one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """Return deploy/compose.yaml, parsed."""
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    """Return a compose service's environment as the container sees it (unset ones dropped)."""
    env = service.get("environment") or {}
    assert isinstance(env, dict), "write environment as a mapping"
    return {k: interpolate(str(v)) for k, v in env.items() if v is not None}


def compose_ports(service: Mapping[str, Any]) -> set[int]:
    """Return the container ports a compose service exposes or publishes."""
    ports = {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}
    return ports | {int(p) for p in service.get("expose", [])}


def test_compose_runs_every_service_from_the_image(compose: dict[str, Any]) -> None:
    """The five services and the migration are `ap-service` commands of the one image."""
    services = compose["services"]
    for name in [*SETTINGS, "migrate"]:
        assert services[name]["command"] == [name]
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert services[name]["image"] == services["control_plane"]["image"]
    assert services["migrate"]["restart"] == "no"
    assert services["devmodel"]["entrypoint"] == ["python", "-m", "devtools.devmodel"]


def test_compose_requires_only_variables_the_env_example_sets(compose: dict[str, Any]) -> None:
    """Every `${VAR:?…}` the compose file requires is in deploy/.env.example, to be replaced."""
    required = {
        match.group(1)
        for match in _VARIABLE.finditer((DEPLOY / "compose.yaml").read_text())
        if match.group(2) == ":?"
    }
    assert required <= set(env_example()), sorted(required - set(env_example()))


@pytest.mark.parametrize("command", GRPC_COMMANDS)
def test_compose_service_settings_ports_and_health_check_match_the_code(
    compose: dict[str, Any], command: str
) -> None:
    """Env vars are real settings; the health check and ports use the port it listens on."""
    service = compose["services"][command]
    env = compose_env(service)
    settings = check_service_env(command, env)
    if command in ROLES:
        assert_role_url(command, env["AP_DATABASE_URL"])
    assert service["healthcheck"]["test"] == [
        "CMD",
        "ap-service",
        "healthcheck",
        f"127.0.0.1:{settings.grpc_port}",
    ]
    assert settings.metrics_port in compose_ports(service)
    published = service.get("ports", [])
    if command == "control_plane":
        assert published == [f"{settings.grpc_port}:{settings.grpc_port}"]
    else:
        assert not published, f"{command} is internal; it must not publish a port"


def test_compose_edge_settings_port_and_health_check_match_the_code(
    compose: dict[str, Any],
) -> None:
    """The edge publishes its HTTP port, exposes its metrics, and checks /readyz on that port."""
    service = compose["services"]["web"]
    settings = check_service_env("web", compose_env(service))
    assert isinstance(settings, WebSettings)
    assert service["ports"] == [f"{settings.http_port}:{settings.http_port}"]
    assert settings.metrics_port in compose_ports(service)
    check = service["healthcheck"]["test"]
    assert check[0] == "CMD"
    assert f"'http://127.0.0.1:{settings.http_port}/readyz'" in check[-1]
    # The cookie secret comes from deploy/.env, never from the file in git.
    assert service["environment"]["AP_COOKIE_SECRET"].startswith("${AP_COOKIE_SECRET:?")


async def test_compose_edge_health_check_passes_on_a_ready_edge_only(
    compose: dict[str, Any],
) -> None:
    """The health-check command, run against a real edge, exits 0 while it is ready."""
    check = compose["services"]["web"]["healthcheck"]["test"][1:]
    port = free_port()
    command = [sys.executable if arg == "python" else arg for arg in check]
    command[-1] = command[-1].replace(":8080/", f":{port}/")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AP_")}
    edge = await Service.start(
        "web",
        [sys.executable, "-m", "services", "web"],
        env | {"AP_HTTP_PORT": str(port), "AP_METRICS_PORT": "0"},
        port=port,
    )
    try:
        await wait_http_ok(f"http://127.0.0.1:{port}/healthz", service=edge)
        assert (await run_command(command)) == 0
    finally:
        await edge.stop()
    assert (await run_command(command)) != 0, "a stopped edge must fail the check"


async def run_command(argv: list[str]) -> int:
    """Run a command and return its exit code."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await proc.wait()


def test_compose_migrates_first_and_starts_the_control_planes_clients_after_it(
    compose: dict[str, Any],
) -> None:
    """Dependencies: Postgres → migrate → services; control plane → worker and edge."""
    services = compose["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert set(compose_env(services["migrate"])) == MIGRATE_ENV
    for name in ("control_plane", "vault", "gateway"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    control_plane = load_settings("control_plane", compose_env(services["control_plane"]))
    expected = f"control_plane:{control_plane.grpc_port}"
    for name in ("worker", "web"):
        client = services[name]
        assert client["depends_on"]["control_plane"] == {"condition": "service_healthy"}
        assert compose_env(client)["AP_CONTROL_PLANE_ADDRESS"] == expected


def test_compose_points_the_services_at_the_dev_model(compose: dict[str, Any]) -> None:
    """By default the control plane and worker use the devmodel service, on its port."""
    services = compose["services"]
    port = services["devmodel"]["command"][services["devmodel"]["command"].index("--port") + 1]
    assert port in services["devmodel"]["expose"]
    for name in ("control_plane", "worker"):
        assert compose_env(services[name])["AP_MODEL_BASE_URL"] == f"http://devmodel:{port}/v1"
        assert services[name]["depends_on"]["devmodel"] == {"condition": "service_healthy"}


def test_compose_mounts_the_master_key_from_a_secret(compose: dict[str, Any]) -> None:
    """The vault reads its master keys from a compose secret file, not the environment."""
    vault = compose["services"]["vault"]
    (secret,) = vault["secrets"]
    assert compose_env(vault)["AP_VAULT_MASTER_KEY_FILE"] == f"/run/secrets/{secret}"
    assert compose["secrets"][secret]["file"].startswith("./secrets/")


def test_compose_control_plane_reaches_the_vault_with_its_admin_token(
    compose: dict[str, Any],
) -> None:
    """The control plane dials the vault service and presents the token the vault expects."""
    services = compose["services"]
    vault = load_settings("vault", compose_env(services["vault"]))
    control_plane = services["control_plane"]["environment"]
    assert compose_env(services["control_plane"])["AP_VAULT_ADDRESS"] == (
        f"vault:{vault.grpc_port}"
    )
    token = services["vault"]["environment"]["AP_VAULT_ADMIN_TOKEN"]
    assert control_plane["AP_VAULT_ADMIN_TOKEN"] == token
    assert token != services["vault"]["environment"]["AP_VAULT_RESOLVE_TOKEN"]


def test_compose_gives_a_stopping_worker_time_to_drain(compose: dict[str, Any]) -> None:
    """stop_grace_period outlasts the worker's drain grace plus the hand-back of its runs."""
    worker = compose["services"]["worker"]
    settings = load_settings("worker", compose_env(worker))
    grace = worker["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) >= settings.shutdown_grace_seconds + WORKER_RELEASE_MARGIN_S


def test_compose_bootstraps_the_first_workspace_with_the_key_from_the_env_file(
    compose: dict[str, Any],
) -> None:
    """A one-shot `bootstrap` after the migration, its owner key from deploy/.env, printed never."""
    services = compose["services"]
    bootstrap = services["bootstrap"]
    assert bootstrap["image"] == services["control_plane"]["image"]
    assert bootstrap["restart"] == "no"
    assert bootstrap["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    key_env = check_bootstrap_args([interpolate(str(arg)) for arg in bootstrap["command"]])
    env = compose_env(bootstrap)
    assert set(env) == {"AP_DATABASE_URL", key_env}
    assert_role_url("control_plane", env["AP_DATABASE_URL"])
    # The key comes from deploy/.env, whose example says how to make one.
    assert bootstrap["environment"][key_env].startswith(f"${{{key_env}:?")
    assert f"\n{key_env}=" in (DEPLOY / ".env.example").read_text()


def check_bootstrap_args(args: list[str]) -> str:
    """Assert a deployment's bootstrap command takes its key from the environment; name it."""
    assert args[0] == "bootstrap"
    parsed = build_bootstrap_parser().parse_args(args[1:])
    assert parsed.api_key_env, "without --api-key-env the key would be printed into a log"
    assert parsed.exists_ok, "the one-shot runs on every deploy; a second run must succeed"
    key_env: str = parsed.api_key_env
    return key_env


# ── Kubernetes ──────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Cluster:
    """The kustomization and every resource it lists."""

    kustomization: dict[str, Any]
    resources: list[dict[str, Any]]

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        """Return the resources of a kind, by name."""
        return {r["metadata"]["name"]: r for r in self.resources if r["kind"] == kind}

    def config_map(self, name: str) -> dict[str, str]:
        """Return a ConfigMap's data."""
        data: dict[str, str] = self.of_kind("ConfigMap")[name]["data"]
        return data

    def secrets(self) -> dict[str, dict[str, str]]:
        """Return each generated Secret's data, as the example files shipped with them show."""
        secrets: dict[str, dict[str, str]] = {}
        for generator in self.kustomization["secretGenerator"]:
            data = {f.split("=", 1)[0]: "(file)" for f in generator.get("files", [])}
            for env_file in generator.get("envs", []):
                example = (KUSTOMIZE / f"{env_file}.example").read_text()
                data |= dict(
                    line.split("=", 1)
                    for line in example.splitlines()
                    if line.strip() and not line.startswith("#")
                )
            secrets[generator["name"]] = data
        return secrets


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    """Return the base kustomization and its resources, parsed."""
    kustomization = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    resources = [
        doc
        for path in kustomization["resources"]
        for doc in yaml.safe_load_all((KUSTOMIZE / path).read_text())
        if doc
    ]
    return Cluster(kustomization, resources)


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    """Return the pod spec of a Deployment or Job."""
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container_env(cluster: Cluster, container: Mapping[str, Any]) -> dict[str, str]:
    """Return a container's environment: Secrets as their examples show, fields as stand-ins."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(cluster.config_map(source["configMapRef"]["name"]))
    secrets = cluster.secrets()
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["key"] in secrets[ref["name"]], f"no key {ref['key']} in {ref['name']}"
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            env[var["name"]] = "from-a-field"
    return env


def deployments_by_command(cluster: Cluster) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield each Deployment with the `ap-service` command its one container runs."""
    for deployment in cluster.of_kind("Deployment").values():
        (container,) = pod_spec(deployment)["containers"]
        yield container["args"][0], deployment


def test_kubernetes_runs_each_service_as_a_deployment(cluster: Cluster) -> None:
    """Exactly the five services run; control plane, workers, edges with more than one replica."""
    by_command = dict(deployments_by_command(cluster))
    assert set(by_command) == set(SETTINGS)
    for command in ("control_plane", "worker", "web"):
        assert by_command[command]["spec"]["replicas"] > 1
    for deployment in by_command.values():
        (container,) = pod_spec(deployment)["containers"]
        assert container["image"] == "agentplatform"
        assert "command" not in container, "the image's entry point is `ap-service`"
        assert pod_spec(deployment)["securityContext"]["runAsNonRoot"] is True
        assert pod_spec(deployment)["securityContext"]["runAsUser"] == image_user()
    assert {i["name"] for i in cluster.kustomization["images"]} == {"agentplatform"}


@pytest.mark.parametrize("command", GRPC_COMMANDS)
def test_kubernetes_settings_ports_and_probes_match_the_code(
    cluster: Cluster, command: str
) -> None:
    """Env vars are real settings; ports and gRPC probes use the ports the service binds."""
    deployment = dict(deployments_by_command(cluster))[command]
    (container,) = pod_spec(deployment)["containers"]
    env = container_env(cluster, container)
    settings = check_service_env(command, env)
    if command in ROLES:
        assert_role_url(command, env["AP_DATABASE_URL"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": settings.grpc_port, "metrics": settings.metrics_port}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == settings.grpc_port, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace > settings.shutdown_grace_seconds
    if command == "worker":
        assert grace >= settings.shutdown_grace_seconds + WORKER_RELEASE_MARGIN_S


def test_kubernetes_edge_settings_ports_probes_and_secret_match_the_code(
    cluster: Cluster,
) -> None:
    """The edge's env is real settings; its HTTP probes and metrics use the ports it binds.

    Its cookie secret comes from the Secret, so every replica seals cookies with the same one.
    """
    deployment = dict(deployments_by_command(cluster))["web"]
    (container,) = pod_spec(deployment)["containers"]
    settings = check_service_env("web", container_env(cluster, container))
    assert isinstance(settings, WebSettings)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.http_port, "metrics": settings.metrics_port}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        check = container[probe]["httpGet"]
        assert check["path"] == path, probe
        assert ports.get(check["port"], check["port"]) == settings.http_port, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert secret_ref(container, "AP_COOKIE_SECRET")["name"] == "ap-credentials"
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > settings.shutdown_grace_seconds


def test_kubernetes_services_select_their_pods_and_ports(cluster: Cluster) -> None:
    """Each Service selects its Deployment's pods and targets named container ports."""
    deployments = {d["metadata"]["name"]: d for d in cluster.of_kind("Deployment").values()}
    services = cluster.of_kind("Service")
    assert set(services) == {"control-plane", "vault", "gateway", "web"}
    for name, service in services.items():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
        template = deployments[name]["spec"]["template"]
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        (container,) = template["spec"]["containers"]
        by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert by_name[port["targetPort"]] == port["port"], f"{name}: {port}"


@pytest.mark.parametrize("command", ["worker", "web"])
def test_kubernetes_clients_reach_the_control_plane_service(cluster: Cluster, command: str) -> None:
    """Workers' and edges' AP_CONTROL_PLANE_ADDRESS names the control-plane Service's gRPC port."""
    deployment = dict(deployments_by_command(cluster))[command]
    (container,) = pod_spec(deployment)["containers"]
    service = cluster.of_kind("Service")["control-plane"]
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    address = container_env(cluster, container)["AP_CONTROL_PLANE_ADDRESS"]
    assert address == f"control-plane:{grpc['port']}"


def job_container(cluster: Cluster, command: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the Job whose one container runs `ap-service COMMAND`, and that container."""
    for job in cluster.of_kind("Job").values():
        (container,) = pod_spec(job)["containers"]
        if container["args"][0] == command:
            return job, container
    raise AssertionError(f"no Job runs {command}")


def test_kubernetes_migration_job_has_what_migrate_reads(cluster: Cluster) -> None:
    """The Job runs `migrate` with the admin URL and every role's password."""
    job, container = job_container(cluster, "migrate")
    assert container["args"] == ["migrate"]
    assert set(container_env(cluster, container)) == MIGRATE_ENV
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")


def secret_ref(container: Mapping[str, Any], variable: str) -> dict[str, str]:
    """Return the secretKeyRef a container's variable comes from."""
    (var,) = [v for v in container["env"] if v["name"] == variable]
    ref: dict[str, str] = var["valueFrom"]["secretKeyRef"]
    return ref


def test_kubernetes_vault_reads_the_master_keys_from_their_secret(cluster: Cluster) -> None:
    """AP_VAULT_MASTER_KEYS comes from the file the master-key Secret is generated from."""
    vault = dict(deployments_by_command(cluster))["vault"]
    (container,) = pod_spec(vault)["containers"]
    ref = secret_ref(container, "AP_VAULT_MASTER_KEYS")
    (generator,) = [g for g in cluster.kustomization["secretGenerator"] if g["name"] == ref["name"]]
    assert [f.split("=", 1)[0] for f in generator["files"]] == [ref["key"]]


def test_kubernetes_control_plane_reaches_the_vault_with_its_admin_token(
    cluster: Cluster,
) -> None:
    """The control plane dials the vault Service and presents the token the vault expects."""
    by_command = dict(deployments_by_command(cluster))
    (control_plane,) = pod_spec(by_command["control_plane"])["containers"]
    (vault,) = pod_spec(by_command["vault"])["containers"]
    service = cluster.of_kind("Service")["vault"]
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert container_env(cluster, control_plane)["AP_VAULT_ADDRESS"] == f"vault:{grpc['port']}"
    token = secret_ref(vault, "AP_VAULT_ADMIN_TOKEN")
    assert secret_ref(control_plane, "AP_VAULT_ADMIN_TOKEN") == token
    assert secret_ref(vault, "AP_VAULT_RESOLVE_TOKEN") != token


def test_kubernetes_autoscales_workers_and_budgets_disruptions(cluster: Cluster) -> None:
    """An HPA scales the worker Deployment; every Deployment has a PodDisruptionBudget."""
    (hpa,) = cluster.of_kind("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "worker",
    }
    assert hpa["spec"]["minReplicas"] > 1
    budgets = cluster.of_kind("PodDisruptionBudget").values()
    for deployment in cluster.of_kind("Deployment").values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert any(
            b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets
        ), f"no PodDisruptionBudget for {deployment['metadata']['name']}"


def test_kubernetes_lets_only_the_control_plane_and_gateway_reach_the_vault(
    cluster: Cluster,
) -> None:
    """Ingress is denied by default; the vault's gRPC port admits exactly those two."""
    policies = cluster.of_kind("NetworkPolicy").values()
    assert any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] for p in policies)
    vault = dict(deployments_by_command(cluster))["vault"]
    vault_labels = vault["spec"]["template"]["metadata"]["labels"]
    grpc_port = load_settings("vault", {}).grpc_port
    admitted: list[dict[str, Any]] = []
    for policy in policies:
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        if not selector or not selector.items() <= vault_labels.items():
            continue
        for rule in policy["spec"].get("ingress", []):
            if grpc_port in [p["port"] for p in rule.get("ports", [])] or "ports" not in rule:
                assert "from" in rule, "the vault's gRPC port must not be open to everyone"
                admitted += rule["from"]
    assert sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in admitted) == [
        "control-plane",
        "gateway",
    ]


def test_kubernetes_secret_references_resolve(cluster: Cluster) -> None:
    """Every Secret and ConfigMap a workload names is generated or defined here."""
    secrets = cluster.secrets()
    workloads = [*cluster.of_kind("Deployment").values(), *cluster.of_kind("Job").values()]
    for workload in workloads:
        for volume in pod_spec(workload).get("volumes", []):
            assert volume["secret"]["secretName"] in secrets
        for container in pod_spec(workload)["containers"]:
            container_env(cluster, container)  # asserts each secretKeyRef and ConfigMap exists
    examples = {p.name for p in (KUSTOMIZE / "secrets").glob("*.example")}
    for generator in cluster.kustomization["secretGenerator"]:
        for env_file in generator.get("envs", []):
            assert f"{Path(env_file).name}.example" in examples


def test_kubernetes_bootstraps_the_first_workspace_with_a_key_from_the_secret(
    cluster: Cluster,
) -> None:
    """A bootstrap Job, as the control plane's role, takes the owner key from ap-credentials."""
    job, container = job_container(cluster, "bootstrap")
    key_env = check_bootstrap_args(container["args"])
    env = container_env(cluster, container)
    assert set(env) == {"AP_DATABASE_URL", key_env}
    assert_role_url("control_plane", env["AP_DATABASE_URL"])
    assert secret_ref(container, key_env)["name"] == "ap-credentials"
    assert pod_spec(job)["restartPolicy"] == "OnFailure"  # retried until the migration ran
    assert pod_spec(job)["securityContext"]["runAsUser"] == image_user()


async def run_bootstrap(args: list[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run `ap-service ARGS` as the image would; return its code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_deployments_bootstrap_stores_the_given_key_and_prints_none(
    cluster: Cluster, database: str
) -> None:
    """The Job's command makes a working owner key of the secret, once, and never shows it."""
    _job, container = job_container(cluster, "bootstrap")
    key_env = check_bootstrap_args(container["args"])
    key = f"ap_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    env = {"AP_DATABASE_URL": role_dsn(database, "ap_control_plane"), key_env: key}

    code, out, err = await run_bootstrap(container["args"], {**env, key_env: "ap_weak_key"})
    assert code == 2 and key_env in err, err
    code, out, err = await run_bootstrap(container["args"], env)
    assert code == 0, err
    assert key not in out + err and "api_key" not in json.loads(out)
    code, again, err = await run_bootstrap(container["args"], env)
    assert (code, again) == (0, ""), err
    assert "already bootstrapped" in err

    async with start_stack(
        database, internal_token=secrets.token_urlsafe(16), with_worker=False
    ) as stack:
        client = stack.client(key)
        profile = await client.profiles.GetProfile(
            profile_service_pb2.GetProfileRequest(name="users/me/profile"),
            metadata=client.auth,
            timeout=10,
        )
    assert (profile.role, profile.workspace) == ("owner", json.loads(out)["workspace"])
