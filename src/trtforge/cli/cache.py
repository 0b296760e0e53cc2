"""Binary cache commands: `push`, `pull`, `key generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from trtforge.cli._app import app, console, print_json
from trtforge.cli._options import GpuArch, TrtllmPython
from trtforge.cli._progress import bytes_progress
from trtforge.errors import CacheError, UsageError

key_app = typer.Typer(help="Signing keys for binary caches.", no_args_is_help=True)
app.add_typer(key_app, name="key")


@app.command()
def push(
    name_or_path: Annotated[str, typer.Argument(help="Linked engine name or store path to upload.")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Cache URL: s3://bucket/prefix or file:///path (default: push_to of the cache table).",
        ),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option("--key-file", help="Secret key to sign with ($TRTFORGE_SIGNING_KEY_FILE)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print what was pushed as JSON.")] = False,
) -> None:
    """Upload a store entry (every file, its signature, then its manifest) to a binary cache."""
    from trtforge.cache.config import load_cache_config, load_signing_key
    from trtforge.cache.transfer import push_entry
    from trtforge.store.links import resolve_engine

    path = resolve_engine(name_or_path)
    url = to or load_cache_config().push_to
    if not url:
        raise UsageError("push: no cache given: pass --to URL or set push_to in the [cache] table")
    secret = load_signing_key(key_file)
    with bytes_progress(json_output) as progress:
        result = push_entry(path, url, secret=secret, progress=progress)
    if json_output:
        print_json(result.to_json())
        return
    state = "already in" if result.already_present else "pushed to"
    signed = f", signed by {result.signed_by}" if result.signed_by else ", unsigned"
    console.print(f"{escape(result.name)} {result.hash} {state} {escape(url)}{signed}", soft_wrap=True)


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="Catalogue entry whose engine to fetch.")],
    from_url: Annotated[
        str | None,
        typer.Option("--from", help="Cache URL (default: the substituters of the cache table, in order)."),
    ] = None,
    allow_unsigned: Annotated[
        bool, typer.Option("--allow-unsigned", help="Accept entries without a trusted signature.")
    ] = False,
    gpu_arch: GpuArch = None,
    trtllm_python: TrtllmPython = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print what was pulled as JSON.")] = False,
) -> None:
    """Fetch the engine a catalogue entry would build from a binary cache, verify it, publish it, link it."""
    from trtforge.builder.pipeline import plan_build
    from trtforge.cache.config import load_cache_config
    from trtforge.cache.transfer import pull_entry
    from trtforge.catalog import load_catalog

    config = load_cache_config()
    urls = [from_url] if from_url else config.substituters
    if not urls:
        raise UsageError("pull: no cache given: pass --from URL or list substituters in the [cache] table")
    plan = plan_build(load_catalog().get(name), gpu_arch=gpu_arch, trtllm_python=trtllm_python)
    misses: list[str] = []
    with bytes_progress(json_output) as progress:
        for url in urls:
            try:
                result = pull_entry(
                    name,
                    plan.hash,
                    url,
                    trusted=config.trusted_public_keys,
                    allow_unsigned=allow_unsigned,
                    store=plan.store,
                    progress=progress,
                )
                break
            except CacheError as exc:
                if type(exc) is not CacheError or len(urls) == 1:
                    raise  # untrusted or corrupt: stop here, never fall through to another cache silently
                misses.append(str(exc))
        else:
            raise CacheError(f"{name!r} (hash {plan.hash}) is in none of the caches: {'; '.join(misses)}")
    if json_output:
        print_json(result.to_json())
        return
    state = "already in the store" if result.already_present else f"pulled from {result.url}"
    console.print(f"{escape(name)}: {state}", soft_wrap=True)
    print(result.path)


@key_app.command("generate")
def key_generate(
    name: Annotated[str, typer.Argument(help="Key name, e.g. build-1 (it is part of every signature).")],
) -> None:
    """Write NAME.secret and NAME.public (ed25519) here; print the public key as NAME:<base64>."""
    from trtforge.cache.signing import generate_key

    secret_path, public_path, secret = generate_key(name, Path.cwd())
    console.print(
        f"wrote {escape(str(secret_path))} (keep it secret) and {escape(str(public_path))}", soft_wrap=True
    )
    print(secret.public)
