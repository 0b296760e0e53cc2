"""Stand-in for `python -m tensorrt_llm.commands.bench` (trtllm-bench) of TensorRT-LLM 1.3: the TensorRT backend
is gone, so there is no `build` subcommand (click answers "No such command 'build'", exit status 2)."""

from __future__ import annotations

import click


@click.group()
@click.option("--model", "-m", required=True)
@click.option("--model_path", default=None)
@click.option("--workspace", "-w", default="/tmp")
@click.option("--revision", default=None)
@click.option("--log_level", default="info")
def main(**_options: object) -> None:
    """TensorRT-LLM benchmarking (stand-in)."""


def _not_reproduced(name: str) -> None:
    @main.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def command() -> None:
        raise click.ClickException(f"trtllm-bench {name} is not reproduced by the stand-in")


for _name in ("throughput", "latency", "prepare-dataset"):
    _not_reproduced(_name)

if __name__ == "__main__":
    main()
