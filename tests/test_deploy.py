"""Offline checks of the deployment files: docker-compose.yml, .env.example, docker/, k8s/.

Nothing here needs Docker or a cluster. The Kubernetes overlays are rendered with `kubectl
kustomize` and validated with kubernetes-validate (the KEDA objects, CRDs it cannot know, are
checked structurally); docker-compose.yml is validated against the compose-spec schema vendored
by check-jsonschema. Each of those three is skipped, with the reason, where it is missing. Every
`onbrand ...` command line the images, compose and the manifests run is checked against the
installed CLI's --help.
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared import egress
from shared.config import Settings
from shared.db.models import TERMINAL_STATUSES
from shared.queue import BULK_PRIORITY, CPU_QUEUES, GPU_QUEUES, GPU_STAGES, TASK_QUEUES

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKER = ROOT / "docker"
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
K8S_VERSION = "1.30.0"  # oldest Kubernetes the manifests must be valid for

SETTINGS_VARS = {f"ONBRAND_{name.upper()}" for name in Settings.model_fields}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|CREDENTIAL", re.I)
INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?])[^}]*)?\}$")
APP_SERVICES = ("migrate", "gateway", "cpu-worker", "gpu-worker", "gpu-queues-on-cpu")
# Reach the public internet (through the SSRF guard): webhooks, DAM pushes, hosted LLMs; URL imports.
INTERNET_COMPONENTS = ("cpu-worker", "gateway")
WORKER_SERVICES = ("cpu-worker", "gpu-worker", "gpu-queues-on-cpu")
POOL_QUEUES = {"cpu": CPU_QUEUES, "gpu": GPU_QUEUES}
SOFT_SHUTDOWN = "ONBRAND_WORKER_SOFT_SHUTDOWN_SECONDS"

ONBRAND_NAME = re.compile(r"ONBRAND_[A-Z0-9_]+")
CODE_DIRS = ("shared", "services", "workers")
# Read in code but deliberately left out of .env.example and the README: `onbrand worker` sets it
# for its own pool processes (which models to warm); nobody should set it by hand.
INTERNAL_VARS = {"ONBRAND_WORKER_QUEUES"}


@functools.cache
def code_vars() -> frozenset[str]:
    """Every ONBRAND_ name the code mentions (Settings' env_prefix aside)."""
    found: set[str] = set()
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            found.update(ONBRAND_NAME.findall(path.read_text()))
    return frozenset(found)


# ----------------------------------------------------------------------------- docker-compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in compose["services"], f"service {name} missing"
    return compose["services"][name]


def healthcheck_text(svc: dict[str, Any]) -> str:
    test = svc["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def test_compose_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {"postgres", "redis", "minio", "createbucket", *APP_SERVICES}


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc["image"]
        assert ":" in image.rsplit("/", 1)[-1], f"{name}: image {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image}"
    assert re.fullmatch(r"pgvector/pgvector:(\d+\.\d+\.\d+-)?pg16", service(compose, "postgres")["image"])
    assert service(compose, "redis")["image"].startswith("redis:7")
    assert service(compose, "createbucket")["image"].startswith("minio/mc:")


def test_compose_backing_services(compose: dict[str, Any]) -> None:
    assert "pg_isready" in healthcheck_text(service(compose, "postgres"))
    redis = service(compose, "redis")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert "ping" in healthcheck_text(redis)
    assert "healthcheck" in service(compose, "minio")
    bucket = service(compose, "createbucket")
    assert bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb" in " ".join(bucket["command"]) and bucket["restart"] == "no"


def test_compose_migrate_is_one_shot(compose: dict[str, Any]) -> None:
    migrate = service(compose, "migrate")
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["gateway", "cpu-worker", "gpu-worker", "gpu-queues-on-cpu"])
def test_compose_app_waits_for_the_stack(compose: dict[str, Any], name: str) -> None:
    depends = service(compose, name)["depends_on"]
    for dep in ("postgres", "redis", "minio"):
        assert depends[dep]["condition"] == "service_healthy", (name, dep)
    for dep in ("migrate", "createbucket"):
        assert depends[dep]["condition"] == "service_completed_successfully", (name, dep)


def test_compose_gateway(compose: dict[str, Any]) -> None:
    gateway = service(compose, "gateway")
    assert "8000:8000" in gateway["ports"]
    assert gateway["command"][:1] == ["gateway"] and "0.0.0.0" in gateway["command"]
    assert gateway["healthcheck"]["test"] == ["CMD", "onbrand", "probe", "http"]  # GET /healthz


def test_compose_beat_checks_its_heartbeat(compose: dict[str, Any]) -> None:
    # The beat runs from the cpu-worker image, whose HEALTHCHECK pings a worker node it does not run.
    beat = service(compose, "beat")
    assert beat["command"] == ["beat"]
    test = beat["healthcheck"]["test"]
    assert test[:6] == ["CMD", "onbrand", "probe", "heartbeat", "--process", "beat"], test


@pytest.mark.parametrize("name,pool", [("cpu-worker", "cpu"), ("gpu-worker", "gpu"), ("gpu-queues-on-cpu", "gpu")])
def test_compose_worker_pings_its_own_node(compose: dict[str, Any], name: str, pool: str) -> None:
    svc = service(compose, name)
    command = svc["command"]
    assert command[:3] == ["worker", "--pool", pool]
    assert command[command.index("--name") + 1] == f"{pool}@%h"
    assert command[command.index("--metrics-port") + 1] == "9808"
    # `probe ping` finds this host's node <pool>@<hostname> itself: no shell, no $HOSTNAME
    assert svc["healthcheck"]["test"] == ["CMD", "onbrand", "probe", "ping", "--pool", pool]
    assert "/models:ro" in " ".join(svc["volumes"])


def duration_seconds(text: str) -> float:
    """A compose duration ("5m", "1m30s", "90s") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a compose duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_duration_seconds() -> None:
    assert duration_seconds("5m") == 300 and duration_seconds("1m30s") == 90 and duration_seconds("10m") == 600
    with pytest.raises(AssertionError):
        duration_seconds("5 minutes")


@pytest.mark.parametrize("name", WORKER_SERVICES)
def test_compose_worker_soft_shutdown_ends_before_sigkill(compose: dict[str, Any], name: str) -> None:
    svc = service(compose, name)
    soft = float(svc["environment"][SOFT_SHUTDOWN])
    grace = duration_seconds(svc["stop_grace_period"])
    assert 0 < soft < grace, f"{name}: soft shutdown {soft}s must end before stop_grace_period {grace}s"


def test_compose_gpu_worker_is_optional(compose: dict[str, Any]) -> None:
    gpu = service(compose, "gpu-worker")
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert service(compose, "gpu-queues-on-cpu")["profiles"] == ["cpu-only"]
    for name in ("postgres", "redis", "minio", "createbucket", "migrate", "gateway", "cpu-worker"):
        assert "profiles" not in service(compose, name), f"{name} must start without a profile"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_app_env(compose: dict[str, Any], name: str) -> None:
    svc = service(compose, name)
    assert svc["env_file"] == ".env"
    env = svc["environment"]
    assert env["ONBRAND_STORAGE_BACKEND"] == "s3"
    assert env["ONBRAND_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["ONBRAND_REDIS_URL"].startswith("redis://redis:6379")
    assert "@postgres:5432/" in env["ONBRAND_DATABASE_URL"]
    assert set(env) <= SETTINGS_VARS, set(env) - SETTINGS_VARS


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")
    else:
        yield path, node


def test_compose_has_no_inline_secrets(compose: dict[str, Any]) -> None:
    for path, value in walk(compose):
        key = path.rsplit(".", 1)[-1]
        if SECRET_NAME.search(key):
            assert isinstance(value, str) and INTERPOLATION.match(value), f"{path} must come from .env: {value!r}"
        if isinstance(value, str):
            # credentials inside a URL (scheme://user:password@host) must be interpolated too
            for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert INTERPOLATION.match(password), f"{path}: inline password in URL"


def test_compose_interpolations_are_defined_in_env_example(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    needed = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?\?)", text))
    defined = set(env_example_vars(active_only=True))
    assert needed, "expected required variables (${VAR:?...}) in docker-compose.yml"
    assert needed <= defined, f"required by docker-compose.yml, not set in .env.example: {needed - defined}"


def test_compose_builds_from_docker_dir(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        build = service(compose, name)["build"]
        assert build["context"] == "."
        assert (ROOT / build["dockerfile"]).is_file(), build


def test_compose_matches_compose_spec() -> None:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.skip("check-jsonschema is not installed (it vendors the compose-spec schema)")
    import jsonschema
    from check_jsonschema.builtin_schemas import get_builtin_schema

    schema = get_builtin_schema("vendor.compose-spec")
    validator = jsonschema.validators.validator_for(schema)(schema)  # the draft the schema declares
    errors = sorted(validator.iter_errors(yaml.safe_load(COMPOSE.read_text())), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


# ----------------------------------------------------------------------------- .env.example


def env_example_vars(active_only: bool = False) -> dict[str, str]:
    """NAME -> value of every `NAME=value` line, and of every `# NAME=value` line unless active_only."""
    found: dict[str, str] = {}
    pattern = r"^([A-Z][A-Z0-9_]*)=(.*)$" if active_only else r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=(.*)$"
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(pattern, line.strip())
        if match:
            found.setdefault(match.group(1), match.group(2))
    return found


def test_env_example_documents_every_setting() -> None:
    documented = set(env_example_vars())
    missing = sorted(
        f"ONBRAND_{name.upper()}" for name in Settings.model_fields if f"ONBRAND_{name.upper()}" not in documented
    )
    assert not missing, f"add to .env.example: {missing}"


def test_env_example_has_no_unknown_onbrand_vars() -> None:
    # CLI options read from the environment (ONBRAND_API_URL, ONBRAND_API_KEY) are not Settings fields
    unknown = {name for name in env_example_vars() if name.startswith("ONBRAND_")} - SETTINGS_VARS - code_vars()
    assert not unknown, f"neither fields of shared.config.Settings nor read in code: {unknown}"


def readme_config_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    assert "\n## Configuration\n" in text
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("|")]


def readme_config_rows() -> set[str]:
    """The variables the README's Configuration table has a row for."""
    return {m.group(1) for line in readme_config_lines() if (m := re.match(r"^\| `(ONBRAND_[A-Z0-9_]+)` \|", line))}


def test_every_variable_read_is_documented() -> None:
    assert INTERNAL_VARS <= code_vars(), "stale INTERNAL_VARS exemption: the code no longer reads it"
    needed = (SETTINGS_VARS | code_vars()) - INTERNAL_VARS
    assert {"ONBRAND_API_URL", "ONBRAND_API_KEY"} <= needed
    in_env_example = {name for name in env_example_vars() if name.startswith("ONBRAND_")}
    assert not needed - in_env_example, f"add to .env.example: {sorted(needed - in_env_example)}"
    rows = readme_config_rows()
    assert not needed - rows, f"add to README.md's Configuration table: {sorted(needed - rows)}"


def test_documented_variables_exist() -> None:
    known = SETTINGS_VARS | code_vars()
    mentioned = set(ONBRAND_NAME.findall(ENV_EXAMPLE.read_text()))
    assert not mentioned - known, f".env.example names unknown variables: {sorted(mentioned - known)}"
    mentioned = {name for line in readme_config_lines() for name in ONBRAND_NAME.findall(line)}
    assert not mentioned - known, f"README's Configuration table names unknown variables: {sorted(mentioned - known)}"


def configmap_literals() -> dict[str, set[str]]:
    """Variable names of k8s/base/config.env and of every overlay's configMapGenerator, by file."""
    found = {
        "k8s/base/config.env": {
            line.split("=", 1)[0].strip()
            for line in (K8S / "base" / "config.env").read_text().splitlines()
            if "=" in line and not line.lstrip().startswith("#")
        }
    }
    for path in sorted(K8S.glob("overlays/*/kustomization.yaml")):
        for generator in yaml.safe_load(path.read_text()).get("configMapGenerator", []):
            names = {literal.split("=", 1)[0] for literal in generator.get("literals", [])}
            for env_file in generator.get("envs", []):
                names |= {
                    line.split("=", 1)[0]
                    for line in (path.parent / env_file).read_text().splitlines()
                    if "=" in line and not line.lstrip().startswith("#")
                }
            found.setdefault(str(path.relative_to(ROOT)), set()).update(names)
    return found


def test_onbrand_keys_set_in_deploy_files_are_settings(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        keys = set(env) if isinstance(env, dict) else {item.split("=", 1)[0] for item in env}
        unknown = {k for k in keys if k.startswith("ONBRAND_")} - SETTINGS_VARS
        assert not unknown, f"docker-compose.yml {name}: not Settings fields: {unknown}"
    for where, names in configmap_literals().items():
        unknown = {k for k in names if k.startswith("ONBRAND_")} - SETTINGS_VARS
        assert not unknown, f"{where}: not Settings fields: {unknown}"


def test_env_example_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ONBRAND_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = Settings(_env_file=ENV_EXAMPLE)
    active = env_example_vars(active_only=True)
    assert settings.llm_gguf_path == Path(active["ONBRAND_LLM_GGUF_PATH"])
    assert settings.public_url == active["ONBRAND_PUBLIC_URL"]


def test_env_example_has_the_compose_credentials() -> None:
    active = env_example_vars(active_only=True)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD"):
        assert active.get(name), name
    assert len(active["AWS_SECRET_ACCESS_KEY"]) >= 8, "MinIO refuses root passwords shorter than 8"


def test_env_is_not_committed_or_shipped() -> None:
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".git", ".venv", "tests", "k8s"):
        assert entry in ignored, entry


# ----------------------------------------------------------------------------- Dockerfiles

DOCKERFILES = {"gateway": "gateway", "cpu-worker": "cpu", "gpu-worker": "gpu"}


def dockerfile(name: str) -> str:
    # join continuation lines so that each instruction is one line
    return re.sub(r"\\\n", " ", (DOCKER / f"Dockerfile.{name}").read_text())


def instructions(text: str, keyword: str) -> list[str]:
    return [line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [keyword]]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_shape(name: str) -> None:
    text = dockerfile(name)
    stages = instructions(text, "FROM")
    assert len(stages) >= 2, "multi-stage build expected"
    base_defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    for stage in stages:
        image = stage.split()[0]
        image = base_defaults.get(image.strip("${}"), image)
        assert ":" in image and not image.endswith(":latest"), f"unpinned base {image}"
    user = instructions(text, "USER")
    assert user and user[-1].split(":")[0] not in ("0", "root"), "must run as a non-root user"
    assert user[-1].split(":")[0].isdigit(), "numeric USER lets Kubernetes verify runAsNonRoot"
    assert instructions(text, "HEALTHCHECK")
    assert "COPY --from=build /opt/venv /opt/venv" in text
    assert "pip install --no-deps ." in text


def test_dockerfile_bases() -> None:
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in dockerfile("gateway")
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in dockerfile("cpu-worker")
    assert re.search(
        r"^ARG GPU_BASE_IMAGE=pytorch/pytorch:[\w.]+-cuda[\w.]+-cudnn\d+-runtime$", dockerfile("gpu-worker"), re.M
    )


def test_gpu_dockerfile_keeps_the_base_torch() -> None:
    text = dockerfile("gpu-worker")
    assert "--system-site-packages" in text
    assert "--exclude torch --extra gpu --constraints-out /tmp/constraints.txt" in text  # [gpu] from pyproject
    assert "-c /tmp/constraints.txt" in text
    assert "--index-url" not in text, "the GPU image must not install another torch"
    assert "assert torch.version.cuda" in text


def healthcheck_argv(text: str) -> list[str]:
    """The command of a Dockerfile's last HEALTHCHECK; the shell form as ["sh", "-c", ...]."""
    check = instructions(text, "HEALTHCHECK")[-1]
    command = re.split(r"(?:^|\s)CMD\s+", check, maxsplit=1)[1].strip()
    return json.loads(command) if command.startswith("[") else ["sh", "-c", command]


def dockerfile_commands(name: str) -> list[tuple[str, list[str]]]:
    """(where, argv) of the image's default command (ENTRYPOINT + CMD) and of its HEALTHCHECK."""
    text = dockerfile(name)
    entrypoint = json.loads(instructions(text, "ENTRYPOINT")[-1])
    cmd = json.loads(instructions(text, "CMD")[-1])
    return [(f"Dockerfile.{name} CMD", [*entrypoint, *cmd]), (f"Dockerfile.{name} HEALTHCHECK", healthcheck_argv(text))]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_onbrand_in_exec_form(name: str) -> None:
    text = dockerfile(name)
    assert json.loads(instructions(text, "ENTRYPOINT")[-1]) == ["onbrand"]
    assert healthcheck_argv(text)[:2] == ["onbrand", "probe"]


def test_gateway_dockerfile_checks_http() -> None:
    assert healthcheck_argv(dockerfile("gateway")) == ["onbrand", "probe", "http"]


@pytest.mark.parametrize("name,pool", [("cpu-worker", "cpu"), ("gpu-worker", "gpu")])
def test_worker_dockerfile_pings_its_own_node(name: str, pool: str) -> None:
    text = dockerfile(name)
    cmd = json.loads(instructions(text, "CMD")[-1])
    assert cmd[:3] == ["worker", "--pool", pool] and cmd[cmd.index("--name") + 1] == f"{pool}@%h"
    assert healthcheck_argv(text) == ["onbrand", "probe", "ping", "--pool", pool]


def load_requirements_helper():
    spec = importlib.util.spec_from_file_location("docker_requirements", DOCKER / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_helper(tmp_path: Path) -> None:
    helper = load_requirements_helper()
    pyproject = ROOT / "pyproject.toml"
    every = helper.requirements(pyproject)
    without_torch = helper.requirements(pyproject, exclude=("torch",))
    torch_only = helper.requirements(pyproject, only=("torch",))
    assert len(torch_only) == 1 and torch_only[0].startswith("torch")
    assert len(without_torch) == len(every) - 1
    assert not any(helper.requirement_name(r) == "torch" for r in without_torch)
    assert helper.requirement_name("celery[redis]>=5.4,<6") == "celery"
    assert helper.requirement_name("Pytorch_MSSSIM>=1.0") == "pytorch-msssim"
    out = tmp_path / "requirements.txt"
    subprocess.run(
        [sys.executable, str(DOCKER / "requirements.py"), str(pyproject), str(out), "--exclude", "torch"], check=True
    )
    assert out.read_text().splitlines() == without_torch  # one per line: a marker holds spaces
    with pytest.raises(SystemExit):
        helper.requirements(pyproject, only=("no-such-dist",))


# ----------------------------------------------------------------------------- Kubernetes


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(K8S / "overlays" / request.param)


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job")]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def worker_pool(doc: dict[str, Any]) -> str | None:
    """cpu / gpu for a worker Deployment (from its --pool argument), else None."""
    args = pod_spec(doc)["containers"][0].get("args", [])
    return args[args.index("--pool") + 1] if args[:1] == ["worker"] and "--pool" in args else None


def worker_deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {worker_pool(d): d for d in docs if d["kind"] == "Deployment" and worker_pool(d)}
    assert set(found) == {"cpu", "gpu"}, set(found)
    return found


def test_k8s_base_renders() -> None:
    kinds = sorted(d["kind"] for d in kustomize(K8S / "base"))
    assert kinds == sorted(
        [
            "ConfigMap",
            "Service",
            "Deployment",
            "Deployment",
            "Deployment",
            "Deployment",
            "Job",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "TriggerAuthentication",
            "TriggerAuthentication",
            "ScaledObject",
            "ScaledObject",
            *["NetworkPolicy"] * 8,
        ]
    )


def test_k8s_beat_is_a_single_replica() -> None:
    beat = find(kustomize(K8S / "base"), "Deployment", "onbrand-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    (container,) = pod_spec(beat)["containers"]
    assert container["args"] == ["beat"]
    command = container["livenessProbe"]["exec"]["command"]
    assert command[:5] == ["onbrand", "probe", "heartbeat", "--process", "beat"], command


def test_k8s_schema(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed")
    import kubernetes_validate

    overlay, docs = rendered
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: no schema here; test_k8s_keda checks these
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_k8s_objects(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    namespace = {"dev": "onbrand-dev", "prod": "onbrand"}[overlay]
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/component",
            "app.kubernetes.io/part-of",
            "app.kubernetes.io/instance",
        ):
            assert key in labels, f"{overlay}: {doc['kind']}/{doc['metadata']['name']} lacks label {key}"
        assert doc["metadata"]["namespace"] == namespace


def test_k8s_gateway(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    deployment = find(docs, "Deployment", "onbrand-gateway")
    assert "replicas" not in deployment["spec"], "the HPA owns the gateway's replica count"
    (container,) = pod_spec(deployment)["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["args"][:1] == ["gateway"] and "0.0.0.0" in container["args"]
    service = find(docs, "Service", "onbrand-gateway")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = find(docs, "HorizontalPodAutoscaler", "onbrand-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "onbrand-gateway"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = find(docs, "PodDisruptionBudget", "onbrand-gateway")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def option(argv: list[str], name: str, default: str | None = None) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else default


def test_k8s_workers(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    for pool in ("cpu", "gpu"):
        deployment = find(docs, "Deployment", f"onbrand-{pool}-worker")
        (container,) = pod_spec(deployment)["containers"]
        args = container["args"]
        assert args[:3] == ["worker", "--pool", pool] and args[args.index("--name") + 1] == f"{pool}@%h"
        # started / ready: the node answers a Celery ping through the broker
        for probe in ("startupProbe", "readinessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[:5] == ["onbrand", "probe", "ping", "--pool", pool], (overlay, pool, probe, command)
            ping_timeout = float(option(command, "--timeout", "10"))
            assert container[probe]["timeoutSeconds"] > ping_timeout, "the probe's timeout must exceed the ping's"
        # alive: the heartbeat file, no broker (a Redis outage must not restart every worker)
        liveness = container["livenessProbe"]
        command = liveness["exec"]["command"]
        assert command[:5] == ["onbrand", "probe", "heartbeat", "--process", "worker"], (overlay, pool, command)
        # several missed heartbeats (ONBRAND_HEARTBEAT_SECONDS) before a restart, not one slow tick
        assert float(option(command, "--max-age")) >= 6 * Settings.model_fields["heartbeat_seconds"].default
        assert "replicas" not in deployment["spec"], f"{overlay}: KEDA's HPA owns the {pool}-worker count"

    gpu = find(docs, "Deployment", "onbrand-gpu-worker")
    spec = pod_spec(gpu)
    (container,) = spec["containers"]
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert spec["nodeSelector"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in spec["tolerations"])
    assert spec["terminationGracePeriodSeconds"] >= 600
    cpu = find(docs, "Deployment", "onbrand-cpu-worker")
    assert "nvidia.com/gpu" not in pod_spec(cpu)["containers"][0]["resources"].get("limits", {})


def test_k8s_migrate_job(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    job = find(docs, "Job", "onbrand-migrate")
    (container,) = pod_spec(job)["containers"]
    assert container["args"] == ["migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    gateway = pod_spec(find(docs, "Deployment", "onbrand-gateway"))["containers"][0]
    assert container["image"] == gateway["image"]


def test_k8s_pods_are_locked_down(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    for doc in workloads(docs):
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][part]), f"{where}: resources.{part}"
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, where
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{where}: {image}"


def test_k8s_settings_and_secrets(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    assert not [d for d in docs if d["kind"] == "Secret"], "no Secret may be rendered from the repo"
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config["metadata"]["name"].startswith("onbrand-config-"), "expected a hashed configMapGenerator name"
    keys = set(config["data"])
    assert keys <= SETTINGS_VARS, keys - SETTINGS_VARS
    secret_keys = {"ONBRAND_DATABASE_URL", "ONBRAND_REDIS_URL", "ONBRAND_SECRET_KEY"}
    assert not keys & secret_keys, f"{overlay}: secrets belong in onbrand-secrets, not the ConfigMap"
    assert not any(SECRET_NAME.search(k) for k in keys)
    for doc in workloads(docs):
        (container,) = pod_spec(doc)["containers"]
        refs = container["envFrom"]
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in refs
        assert {"secretRef": {"name": "onbrand-secrets"}} in refs


def test_k8s_repo_holds_no_secret_objects() -> None:
    for path in K8S.rglob("*.y*ml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                assert doc.get("kind") != "Secret", f"{path} commits a Secret"
                assert "secretGenerator" not in doc, f"{path} generates a Secret"


def test_k8s_readme_documents_the_secret_keys() -> None:
    text = (K8S / "README.md").read_text()
    keda_keys = [
        ref["key"]
        for doc in kustomize(K8S / "base")
        if doc["kind"] == "TriggerAuthentication"
        for ref in doc["spec"]["secretTargetRef"]
    ]
    assert keda_keys
    for key in (
        "onbrand-secrets",
        "ONBRAND_DATABASE_URL",
        "ONBRAND_REDIS_URL",
        "ONBRAND_SECRET_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "onbrand-models",
        *keda_keys,
    ):
        assert f"`{key}`" in text, key  # in the secret table
        if key.isupper():
            assert f"--from-literal={key}=" in text, f"{key} missing from the kubectl create example"


def test_k8s_env_and_soft_shutdown(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    for doc in workloads(docs):
        for container in containers(doc):
            unknown = {k for k in env_of(container) if k.startswith("ONBRAND_")} - SETTINGS_VARS
            assert not unknown, f"{overlay}: {doc['metadata']['name']}: env not Settings fields: {unknown}"
    for pool, deployment in worker_deployments(docs).items():
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        (container,) = pod_spec(deployment)["containers"]
        soft = env_of(container).get(SOFT_SHUTDOWN)
        assert soft is not None, f"{overlay}: {pool}-worker: set {SOFT_SHUTDOWN} (the default is 60 s)"
        assert 0 < float(soft) < grace, f"{overlay}: {pool}-worker: soft shutdown {soft}s >= grace {grace}s"


# ----------------------------------------------------------------------------- KEDA


def bulk_priority_lists(queues: tuple[str, ...]) -> set[str]:
    """kombu's Redis lists of the bulk-priority messages of these queues (the bare name is priority 0)."""
    bulk_queues = {TASK_QUEUES[task] for task in ("onbrand.embed_assets", "onbrand.reembed")}
    return {f"{queue}\x06\x16{BULK_PRIORITY}" for queue in queues if queue in bulk_queues}


def test_bulk_priority_list_name() -> None:
    assert bulk_priority_lists(CPU_QUEUES) == {"retrieval\x06\x169"}
    assert bulk_priority_lists(GPU_QUEUES) == set()


def test_k8s_keda(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    auths = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    targeted: dict[str, dict[str, Any]] = {}
    for so in scaled:
        where = f"{overlay}: ScaledObject/{so['metadata']['name']}"
        assert so["apiVersion"] == "keda.sh/v1alpha1", where
        spec = so["spec"]
        ref = spec["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment" and ref.get("apiVersion", "apps/v1") == "apps/v1", where
        deployment = find(docs, "Deployment", ref["name"])
        pool = worker_pool(deployment)
        assert pool, f"{where} scales {ref['name']}, which is no worker"
        assert pool not in targeted, f"{overlay}: two ScaledObjects scale the {pool}-worker"
        targeted[pool] = spec
        triggers = [t for t in spec["triggers"] if t["type"] == "redis"]
        assert {t["type"] for t in spec["triggers"]} == ({"redis", "postgresql"} if pool == "gpu" else {"redis"}), where
        lists = [t["metadata"]["listName"] for t in triggers]
        expected = set(POOL_QUEUES[pool]) | bulk_priority_lists(POOL_QUEUES[pool])
        assert len(lists) == len(set(lists)) and set(lists) == expected, (where, lists, expected)
        for trigger in triggers:
            meta = trigger["metadata"]
            assert int(meta["listLength"]) >= 1 and meta["databaseIndex"] == "0", (where, meta)
            auth = auths.get(trigger["authenticationRef"]["name"])
            assert auth is not None, f"{where}: no TriggerAuthentication {trigger['authenticationRef']['name']}"
            refs = auth["spec"]["secretTargetRef"]
            assert {r["name"] for r in refs} == {"onbrand-secrets"}, refs
            assert {"address", "password"} <= {r["parameter"] for r in refs}, refs
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], where
        assert spec.get("pollingInterval", 30) <= 30, where
    assert set(targeted) == {"cpu", "gpu"}, f"{overlay}: every worker Deployment needs a ScaledObject"
    gpu_demand(targeted["gpu"], auths)
    assert targeted["gpu"]["minReplicaCount"] == 0, "idle GPUs scale to zero"
    assert targeted["gpu"]["cooldownPeriod"] >= 600, "a busy GPU worker's task is not in the list: cool down slowly"
    assert targeted["cpu"]["minReplicaCount"] >= 1, "the webhooks queue (outbox sweeps) needs a consumer"
    for pool, deployment in worker_deployments(docs).items():
        assert "replicas" not in deployment["spec"], f"{overlay}: {pool}-worker: KEDA's HPA owns replicas"


def gpu_demand(spec: dict[str, Any], auths: dict[str, dict[str, Any]]) -> None:
    """The GPU pool scales on the GPU runs in Postgres (waiting for the fair dispatcher or running): every GPU
    stage named, live campaigns only, a connection from the Secret."""
    (trigger,) = [t for t in spec["triggers"] if t["type"] == "postgresql"]
    query = trigger["metadata"]["query"]
    assert all(f"'{name}'" in query for name in GPU_STAGES), query
    assert all(f"'{status}'" in query for status in TERMINAL_STATUSES) and "NOT IN" in query, query
    refs = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
    assert [(r["parameter"], r["name"]) for r in refs] == [("connection", "onbrand-secrets")], refs
    assert int(trigger["metadata"]["targetQueryValue"]) >= 1


def test_k8s_overlays_do_not_set_worker_replicas() -> None:
    for path in K8S.glob("overlays/*/*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Deployment" and "worker" in doc["metadata"]["name"]:
                assert "replicas" not in doc.get("spec", {}), f"{path}: size workers with the ScaledObject"


# ----------------------------------------------------------------------------- NetworkPolicy


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def policies_for(docs: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    """The NetworkPolicies whose podSelector selects a pod with these labels."""
    return [d for d in docs if d["kind"] == "NetworkPolicy" and selector_matches(d["spec"]["podSelector"], labels)]


def policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])]


def rules_of(policies: list[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    """direction: "ingress" or "egress"."""
    return [
        rule for p in policies if direction.capitalize() in policy_types(p) for rule in p["spec"].get(direction) or []
    ]


def allows_port(rule: dict[str, Any], port: int, protocol: str = "TCP") -> bool:
    if not rule.get("ports"):
        return True  # no ports: every port
    return any(
        p.get("protocol", "TCP") == protocol
        and (p.get("port") is None or p["port"] <= port <= p.get("endPort", p["port"]))
        for p in rule["ports"]
    )


BLOCKED = (*egress._V4_BLOCKED, *egress._V6_BLOCKED)  # what the app's SSRF guard refuses


def public_peers(rule: dict[str, Any], direction: str = "to") -> list[dict[str, Any]]:
    """The ipBlocks of an egress rule that reach beyond the non-public ranges; a rule with no peers
    reaches everything ({} stands for that)."""
    peers = rule.get(direction) or []
    if not peers:
        return [{}]
    blocks = [peer["ipBlock"] for peer in peers if "ipBlock" in peer]
    return [
        b
        for b in blocks
        if not any(
            ipaddress.ip_network(b["cidr"]).subnet_of(net)
            for net in BLOCKED
            if ipaddress.ip_network(b["cidr"]).version == net.version
        )
    ]


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    return doc["spec"]["template"]["metadata"]["labels"]


def test_network_policy_helpers() -> None:
    labels = {"app.kubernetes.io/name": "onbrand", "app.kubernetes.io/component": "gateway"}
    assert selector_matches({"matchLabels": {"app.kubernetes.io/name": "onbrand"}}, labels)
    assert selector_matches({}, labels)
    assert not selector_matches(
        {"matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "In", "values": ["cpu-worker"]}]},
        labels,
    )
    assert allows_port({}, 5432) and allows_port({"ports": [{"port": 53, "protocol": "UDP"}]}, 53, "UDP")
    assert not allows_port({"ports": [{"port": 53, "protocol": "UDP"}]}, 53)
    assert public_peers({}) == [{}]
    assert public_peers({"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}, {"namespaceSelector": {}}]}) == []
    assert public_peers({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}) == [{"cidr": "0.0.0.0/0"}]


def test_k8s_network_policies(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    pods = {d["metadata"]["name"]: pod_labels(d) for d in workloads(docs)}
    assert len(pods) == 5, pods
    deny = [
        p
        for p in docs
        if p["kind"] == "NetworkPolicy"
        and set(policy_types(p)) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, f"{overlay}: no default-deny NetworkPolicy"
    for name, labels in pods.items():
        where = f"{overlay}: {name}"
        assert any(selector_matches(p["spec"]["podSelector"], labels) for p in deny), f"{where}: not default-denied"
        policies = policies_for(docs, labels)
        egress_rules = rules_of(policies, "egress")
        for port in (5432, 6379):
            assert any(allows_port(r, port) for r in egress_rules), f"{where}: no egress to {port}"
        assert any(allows_port(r, 53, "UDP") for r in egress_rules), f"{where}: no DNS"
        internet = [(r, b) for r in egress_rules for b in public_peers(r)]
        if labels["app.kubernetes.io/component"] not in INTERNET_COMPONENTS:
            assert not internet, f"{where}: only {INTERNET_COMPONENTS} may reach the internet: {internet}"
            continue
        assert internet, f"{where}: needs the internet (webhooks, DAM pushes, hosted LLMs; URL imports)"
        for rule, block in internet:
            assert block, f"{where}: an egress rule with no destination reaches everything"
            assert rule.get("ports") and all(allows_port(rule, p) for p in (80, 443)), rule
            assert {p["port"] for p in rule["ports"]} <= {80, 443}, rule
            cidr = ipaddress.ip_network(block["cidr"])
            excepted = [ipaddress.ip_network(n) for n in block.get("except", [])]
            for net in BLOCKED:  # mirrors shared/egress.py: every refused range inside the block is excepted
                if net.version == cidr.version and net.overlaps(cidr):
                    assert any(net.subnet_of(e) for e in excepted if e.version == net.version), (where, str(net))
        blocks = {b["cidr"]: set(b.get("except", [])) for _, b in internet}
        assert {"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"} <= blocks.get(
            "0.0.0.0/0", set()
        ), blocks
        v6 = [ipaddress.ip_network(n) for n in blocks.get("::/0", set())]
        for net in ("fc00::/7", "fe80::/10", "::1/128"):
            assert any(ipaddress.ip_network(net).subnet_of(e) for e in v6), net
    gateway = rules_of(policies_for(docs, pods["onbrand-gateway"]), "ingress")
    # from any source (the ingress controller's namespace differs per cluster), not only from monitoring
    assert any(allows_port(r, 8000) and not r.get("from") for r in gateway), f"{overlay}: gateway gets no traffic"


def test_k8s_metrics_are_scraped(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    for name in ("onbrand-gateway", "onbrand-cpu-worker", "onbrand-gpu-worker"):
        deployment = find(docs, "Deployment", name)
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", (overlay, name)
        assert annotations.get("prometheus.io/path") == "/metrics", (overlay, name)
        port = int(annotations["prometheus.io/port"])
        (container,) = pod_spec(deployment)["containers"]
        assert port in {p["containerPort"] for p in container.get("ports", [])}, (overlay, name, port)
        if worker_pool(deployment):
            assert option(container["args"], "--metrics-port") == str(port), (overlay, name)
            assert {"name": "metrics", "containerPort": port} in container["ports"]
        else:
            assert port == 8000, "the gateway serves /metrics on its HTTP port"
        ingress = rules_of(policies_for(docs, pod_labels(deployment)), "ingress")
        scrape = [
            r
            for r in ingress
            if allows_port(r, port) and any("namespaceSelector" in peer for peer in r.get("from", []))
        ]
        assert scrape, f"{overlay}: {name}: no ingress on {port} from the monitoring namespace"


# ----------------------------------------------------------------------------- commands


SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash"}
NOT_ONBRAND = {"sleep"}  # the gateway's preStop pause


@functools.cache
def onbrand_help(path: tuple[str, ...]) -> tuple[int, str]:
    exe = Path(sys.executable).parent / "onbrand"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run([str(exe), *path, "--help"], capture_output=True, text=True, timeout=60, env=env)
    return done.returncode, done.stdout + done.stderr


def compose_commands(compose: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(where, argv) of every command our images run in compose (third-party services left out)."""
    found = []
    for name, svc in compose["services"].items():
        if "build" not in svc:
            continue  # postgres, redis, minio, createbucket
        entrypoint = svc.get("entrypoint", ["onbrand"])
        entrypoint = entrypoint if isinstance(entrypoint, list) else ["sh", "-c", entrypoint]
        if "command" in svc:
            command = svc["command"] if isinstance(svc["command"], list) else ["sh", "-c", svc["command"]]
            found.append((f"compose {name} command", [*entrypoint, *command]))
        check = svc.get("healthcheck", {})
        if check.get("test") and not check.get("disable"):
            test = check["test"] if isinstance(check["test"], list) else ["CMD-SHELL", check["test"]]
            if test[0] != "NONE":
                found.append(
                    (f"compose {name} healthcheck", test[1:] if test[0] == "CMD" else ["sh", "-c", " ".join(test[1:])])
                )
    return found


def k8s_commands(docs: list[dict[str, Any]], overlay: str) -> list[tuple[str, list[str]]]:
    found = []
    for doc in workloads(docs):
        for container in containers(doc):
            where = f"{overlay}: {doc['metadata']['name']}/{container['name']}"
            found.append((f"{where} args", [*container.get("command", ["onbrand"]), *container.get("args", [])]))
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "exec" in container.get(probe, {}):
                    found.append((f"{where} {probe}", container[probe]["exec"]["command"]))
            for hook, handler in container.get("lifecycle", {}).items():
                if "exec" in handler:
                    found.append((f"{where} {hook}", handler["exec"]["command"]))
    return found


def all_commands(compose: dict[str, Any]) -> list[tuple[str, list[str]]]:
    found = compose_commands(compose)
    for name in DOCKERFILES:
        found += dockerfile_commands(name)
    if shutil.which("kubectl"):
        for overlay in OVERLAYS:
            found += k8s_commands(kustomize(K8S / "overlays" / overlay), overlay)
    return found


def test_app_containers_run_onbrand_without_a_shell(compose: dict[str, Any]) -> None:
    commands = all_commands(compose)
    assert len(commands) > 20, commands
    for where, argv in commands:
        assert argv and argv[0] not in SHELLS, f"{where}: no shell in our containers: {argv}"
        assert not re.search(r"\bcelery\b.*\s-A\b", " ".join(argv)), f"{where}: use `onbrand ...`: {argv}"
        assert argv[0] == "onbrand" or argv[0] in NOT_ONBRAND, f"{where}: {argv}"


def test_onbrand_commands_exist(compose: dict[str, Any]) -> None:
    exe = Path(sys.executable).parent / "onbrand"
    if not exe.exists():
        pytest.skip(f"{exe} is not installed (pip install -e .)")
    failures = []
    for where, argv in all_commands(compose):
        if argv[:1] != ["onbrand"]:
            continue
        tail = argv[1:]
        path = tuple(tail[: next((i for i, tok in enumerate(tail) if tok.startswith("-")), len(tail))])
        rc, text = onbrand_help(path)
        if rc != 0:
            failures.append(f"{where}: `onbrand {' '.join(path)} --help` exited {rc}: {text.strip()[-300:]}")
            continue
        for token in tail:
            name = token.split("=", 1)[0]
            if token.startswith("--") and not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text):
                failures.append(f"{where}: `onbrand {' '.join(path)}` has no option {name}")
    assert not failures, "\n".join(failures)
