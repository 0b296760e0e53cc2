"""docs/cache.md's Kubernetes example is a valid manifest whose containers run real trtforge commands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import typer
import yaml

from trtforge.cli import app

DOC = Path(__file__).parent.parent / "docs" / "cache.md"


def _example() -> dict[str, Any]:
    [block] = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    resource: dict[str, Any] = yaml.safe_load(block)
    return resource


def _parse(args: list[str]) -> dict[str, Any]:
    command = typer.main.get_command(app).commands[args[0]]  # type: ignore[attr-defined]
    params: dict[str, Any] = command.make_context(args[0], list(args[1:])).params
    return params


def test_the_init_container_example_validates_and_runs_trtforge_commands() -> None:
    resource = _example()
    kubernetes_validate.validate(resource, kubernetes_validate.utils.latest_version(), strict=True)
    pod = resource["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    [serve] = pod["containers"]
    pull = _parse(init["args"])
    assert init["args"][0] == "pull" and pull["from_url"].startswith("s3://")
    up = _parse(serve["args"])
    assert serve["args"][0] == "up" and up["build"] is False and up["names"] == [pull["name"]]
    # Both containers see the same store and link directory.
    env = {c["name"]: {e["name"]: e.get("value") for e in c["env"]} for c in (init, serve)}
    for variable in ("TRTFORGE_HOME", "TRTLLM_ENGINE_PATH"):
        assert env["pull-engine"][variable] == env["trtforge"][variable]
    mounts = {(m["name"], m["mountPath"]) for c in (init, serve) for m in c["volumeMounts"]}
    assert mounts == {("store", env["trtforge"]["TRTFORGE_HOME"])}
