"""deploy/: the Kubernetes manifests validate against the API schemas; Dockerfile, compose file and manifests
agree with each other and with trtforge's own CLI. (No image is built and no cluster is run here.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml

from trtforge.catalog import load_catalog
from trtforge.cli import app

DEPLOY = Path(__file__).parent.parent / "deploy"
IMAGE = re.compile(r"^nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-trtllm-python-py3$")


def _manifests() -> list[dict[str, Any]]:
    resources = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return resources


def _by_kind(kind: str) -> dict[str, Any]:
    [resource] = [r for r in _manifests() if r["kind"] == kind]
    return resource


def _check_up_args(args: list[str]) -> None:
    """The args parse as `trtforge up ...` (every option exists, values convert) and name a catalogue engine."""
    assert args[0] == "up"
    command = typer.main.get_command(app).commands["up"]  # type: ignore[attr-defined]
    context = command.make_context("up", list(args[1:]))
    assert context.params["names"] and all(name in load_catalog() for name in context.params["names"])
    assert context.params["host"] == "0.0.0.0"  # inside a container; exposure is decided outside it
    assert context.params["port"] == 9000


@pytest.mark.parametrize("resource", _manifests(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}")
def test_manifest_validates_strictly(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, kubernetes_validate.utils.latest_version(), strict=True)


def test_a_broken_manifest_is_caught() -> None:
    deployment = _by_kind("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.utils.latest_version(), strict=True)


def test_deployment_service_and_claim_fit_together() -> None:
    deployment, service, claim = (
        _by_kind("Deployment"),
        _by_kind("Service"),
        _by_kind("PersistentVolumeClaim"),
    )
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    _check_up_args(container["args"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == 9000
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in ports
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert (
        volumes[mounts["/var/lib/trtforge"]]["persistentVolumeClaim"]["claimName"]
        == claim["metadata"]["name"]
    )
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["TRTFORGE_HOME"] == "/var/lib/trtforge"


def test_dockerfile_is_on_the_ngc_trtllm_image_and_runs_trtforge_up() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    [default] = re.findall(r"^ARG TRITON_IMAGE=(\S+)$", text, flags=re.M)
    assert IMAGE.match(default)
    assert re.search(r"^FROM \$\{TRITON_IMAGE\}$", text, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["trtforge"\]$', text, flags=re.M)
    [cmd] = re.findall(r"^CMD (\[.*\])$", text, flags=re.M)
    _check_up_args(yaml.safe_load(cmd))
    assert "TRTFORGE_HOME=/var/lib/trtforge" in text
    # Every COPY source exists in the build context (the repository root).
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        *sources, _ = shlex.split(line)
        for source in sources:
            assert (DEPLOY.parent / source).exists(), source


def test_compose_builds_that_image_and_publishes_on_loopback() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    service = compose["services"]["trtforge"]
    assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    ).resolve()
    _check_up_args(service["command"])
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    assert any(volume.endswith(":/var/lib/trtforge") for volume in service["volumes"])
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


PYTORCH = DEPLOY / "kubernetes" / "pytorch"
LLMAPI_IMAGE = re.compile(r"^nvcr\.io/nvidia/tensorrt-llm/release:(?P<version>\d+\.\d+\.\d+(rc\d+)?)$")


def _pytorch_manifests() -> list[dict[str, Any]]:
    resources = []
    for path in sorted(PYTORCH.glob("*.yaml")):
        resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return resources


@pytest.mark.parametrize(
    "resource", _pytorch_manifests(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}"
)
def test_pytorch_manifest_validates_strictly(resource: dict[str, Any]) -> None:
    kubernetes_validate.validate(resource, kubernetes_validate.utils.latest_version(), strict=True)


def test_pytorch_deployment_uses_the_same_claim_and_service_with_the_llmapi_image() -> None:
    [deployment] = [r for r in _pytorch_manifests() if r["kind"] == "Deployment"]
    engine_pod = _by_kind("Deployment")["spec"]["template"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    _check_up_args(container["args"])
    assert container["image"] != engine_pod["spec"]["containers"][0]["image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert _by_kind("Service")["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    claim = _by_kind("PersistentVolumeClaim")["metadata"]["name"]
    assert volumes[mounts["/var/lib/trtforge"]]["persistentVolumeClaim"]["claimName"] == claim
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["TRTFORGE_HOME"] == "/var/lib/trtforge"
    # The HF cache on the store's volume: the entry's weights can be hard links into it.
    assert env["HF_HOME"].startswith("/var/lib/trtforge/")


def test_llmapi_dockerfile_is_on_a_trtllm_without_the_tensorrt_backend() -> None:
    from trtforge.trtllm import has_tensorrt_backend

    text = (DEPLOY / "Dockerfile.llmapi").read_text()
    [default] = re.findall(r"^ARG TRTLLM_IMAGE=(\S+)$", text, flags=re.M)
    match = LLMAPI_IMAGE.match(default)
    assert match and not has_tensorrt_backend(match["version"])  # "auto" resolves to pytorch in it
    assert re.search(r"^FROM \$\{TRTLLM_IMAGE\}$", text, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["trtforge"\]$', text, flags=re.M)
    [cmd] = re.findall(r"^CMD (\[.*\])$", text, flags=re.M)
    _check_up_args(yaml.safe_load(cmd))
    assert "TRTFORGE_HOME=/var/lib/trtforge" in text
    assert "TRITON_HOME" not in text  # no tritonserver in that image: the embedded one from nvidia-pytriton
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        *sources, _ = shlex.split(line)
        for source in sources:
            assert (DEPLOY.parent / source).exists(), source
