"""Offline checks of the deployment files: docker-compose.yml, .env.example, docker/, k8s/.

Nothing here needs Docker or a cluster. The Kubernetes overlays are rendered with `kubectl
kustomize` and validated with kubernetes-validate; docker-compose.yml is validated against the
compose-spec schema vendored by check-jsonschema. Each of those three is skipped, with the
reason, where it is missing.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import Settings

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
    assert "/healthz" in healthcheck_text(gateway)


@pytest.mark.parametrize("name,pool", [("cpu-worker", "cpu"), ("gpu-worker", "gpu"), ("gpu-queues-on-cpu", "gpu")])
def test_compose_worker_pings_its_own_node(compose: dict[str, Any], name: str, pool: str) -> None:
    svc = service(compose, name)
    command = svc["command"]
    assert command[:3] == ["worker", "--pool", pool]
    assert command[command.index("--name") + 1] == f"{pool}@%h"
    check = healthcheck_text(svc)
    assert "inspect ping" in check and f"{pool}@$$HOSTNAME" in check
    assert "/models:ro" in " ".join(svc["volumes"])


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
    missing = sorted(f"ONBRAND_{name.upper()}" for name in Settings.model_fields
                     if f"ONBRAND_{name.upper()}" not in documented)
    assert not missing, f"add to .env.example: {missing}"


def test_env_example_has_no_unknown_onbrand_vars() -> None:
    unknown = {name for name in env_example_vars() if name.startswith("ONBRAND_")} - SETTINGS_VARS
    assert not unknown, f"not fields of shared.config.Settings: {unknown}"


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
    assert re.search(r"^ARG GPU_BASE_IMAGE=pytorch/pytorch:[\w.]+-cuda[\w.]+-cudnn\d+-runtime$",
                     dockerfile("gpu-worker"), re.M)


def test_gpu_dockerfile_keeps_the_base_torch() -> None:
    text = dockerfile("gpu-worker")
    assert "--system-site-packages" in text
    assert "--exclude torch --constraints-out /tmp/constraints.txt" in text
    assert "-c /tmp/constraints.txt" in text
    assert "--index-url" not in text, "the GPU image must not install another torch"
    assert "assert torch.version.cuda" in text


@pytest.mark.parametrize("name,pool", [("cpu-worker", "cpu"), ("gpu-worker", "gpu")])
def test_worker_dockerfile_pings_its_own_node(name: str, pool: str) -> None:
    text = dockerfile(name)
    cmd = json.loads(instructions(text, "CMD")[-1])
    assert cmd[:3] == ["worker", "--pool", pool] and cmd[cmd.index("--name") + 1] == f"{pool}@%h"
    assert f'{pool}@$HOSTNAME' in instructions(text, "HEALTHCHECK")[-1]


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
    subprocess.run([sys.executable, str(DOCKER / "requirements.py"), str(pyproject), str(out), "--exclude", "torch"],
                   check=True)
    assert out.read_text().split() == without_torch
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


def test_k8s_base_renders() -> None:
    kinds = sorted(d["kind"] for d in kustomize(K8S / "base"))
    assert kinds == sorted(["ConfigMap", "Service", "Deployment", "Deployment", "Deployment", "Deployment", "Job",
                            "HorizontalPodAutoscaler", "PodDisruptionBudget"])


def test_k8s_beat_is_a_single_replica() -> None:
    beat = find(kustomize(K8S / "base"), "Deployment", "onbrand-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    assert pod_spec(beat)["containers"][0]["args"] == ["beat"]


def test_k8s_schema(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed")
    import kubernetes_validate

    overlay, docs = rendered
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_k8s_objects(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    namespace = {"dev": "onbrand-dev", "prod": "onbrand"}[overlay]
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of",
                    "app.kubernetes.io/instance"):
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


def test_k8s_workers(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    for pool in ("cpu", "gpu"):
        deployment = find(docs, "Deployment", f"onbrand-{pool}-worker")
        (container,) = pod_spec(deployment)["containers"]
        args = container["args"]
        assert args[:3] == ["worker", "--pool", pool] and args[args.index("--name") + 1] == f"{pool}@%h"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = " ".join(container[probe]["exec"]["command"])
            assert "inspect ping" in command and f'"{pool}@$HOSTNAME"' in command, (overlay, pool, probe)
            assert container[probe]["timeoutSeconds"] > 10, "the probe's timeout must exceed celery's --timeout"
        assert deployment["spec"]["replicas"] >= 1

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
    for key in ("onbrand-secrets", "ONBRAND_DATABASE_URL", "ONBRAND_REDIS_URL", "ONBRAND_SECRET_KEY",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "onbrand-models"):
        assert key in text, key
