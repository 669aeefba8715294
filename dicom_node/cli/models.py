"""``dicom-node models``: list, verify, import, pull and scaffold model weights.

Mounted by ``dicom_node/cli/app.py`` as ``app.add_typer(models.app, name="models")``. Every
command takes ``--models-dir`` (default ``$DICOM_NODE_MODELS_DIR`` or ``./models``): the folder weights
are installed into, empty at first (manifests and model cards come with the package). Exit codes: 0 ok,
1 operational failure (a model not installed, a refused file, a failed download), 2 usage error.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from models.errors import ModelError
from models.installer import import_weights, pull, scaffold
from models.manifest import MODEL_NAMES, MODELS_DIR_ENV, site_manifest_path
from models.registry import model_statuses

app = typer.Typer(help="Model weights: list, verify, import, pull, scaffold.", no_args_is_help=True)

ModelsDir = Annotated[
    Path,
    typer.Option("--models-dir", envvar=MODELS_DIR_ENV, help="Folder holding one sub-folder per model."),
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def _check_name(name: str) -> str:
    if name not in MODEL_NAMES:
        raise typer.BadParameter(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return name


@app.command("list")
def list_models(
    models_dir: ModelsDir = Path("models"), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Show every model, installed or not, and why."""
    statuses = model_statuses(models_dir)
    if as_json:
        typer.echo(json.dumps([{**asdict(s), "untrained": s.untrained} for s in statuses], indent=2))
        return
    for s in statuses:
        state = f"installed {s.version}" if s.installed else "not installed"
        if s.installed and s.untrained:
            state = f"installed UNTRAINED {s.version}"
        site = f" (manifest: the site's copy {s.manifest})" if s.manifest else ""
        typer.echo(f"{s.name:34} {s.pipeline:20} {state}: {s.reason}{site}")


@app.command("verify")
def verify(models_dir: ModelsDir = Path("models")) -> None:
    """Check every installed model's checksum and architecture; exit 1 if any is not usable."""
    statuses = model_statuses(models_dir)
    for s in statuses:
        typer.echo(f"{s.name}: {'ok ' + str(s.version) if s.installed else 'NOT INSTALLED'} ({s.reason})")
    if not all(s.installed for s in statuses):
        raise typer.Exit(code=1)


@app.command("import")
def import_command(
    path: Annotated[
        Path, typer.Argument(help="A published weights file, or site-trained weights with --site.")
    ],
    model: Annotated[str | None, typer.Option("--model", help="Which model the file is for.")] = None,
    site: Annotated[
        bool, typer.Option("--site", help="Site-trained weights of the same architecture.")
    ] = False,
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Install a weights file after checking its hash and architecture."""
    if model is not None:
        _check_name(model)
    if site and model is None:
        raise typer.BadParameter("--site needs --model NAME")
    try:
        record = import_weights(path, models_dir, model=model, site=site)
    except (ModelError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{record.model}: installed {record.version} ({record.provenance}), sha256 {record.sha256}")
    if record.provenance == "published-unpinned":
        typer.echo(
            f"note: {record.model} publishes no hash; the imported file's sha256 is {record.source_sha256}. "
            "Once checked against a second copy, pin it as files[0].sha256 in a copy of the manifest at "
            f"{site_manifest_path(models_dir, record.model)} (a copy there replaces the packaged one)."
        )
    if record.provenance == "scaffold":
        typer.echo("warning: these are UNTRAINED scaffold weights, for plumbing tests and benchmarks only")


@app.command("pull")
def pull_command(
    names: Annotated[list[str] | None, typer.Argument(help="Models to fetch (default: all).")] = None,
    url: Annotated[str | None, typer.Option("--url", help="Fetch from this URL instead (one model).")] = None,
    mirror: Annotated[
        str | None, typer.Option("--mirror", envvar="DICOM_NODE_MODELS_MIRROR", help="Base URL of a mirror.")
    ] = None,
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Download the published weights (needs internet or a mirror) and import them."""
    for name in names or []:
        _check_name(name)
    if url and len(names or []) != 1:
        raise typer.BadParameter("--url needs exactly one model name")
    try:
        records = pull(models_dir, list(names) if names else None, url=url, mirror=mirror)
    except ModelError as exc:
        raise _fail(str(exc)) from exc
    for record in records:
        typer.echo(
            f"{record.model}: installed {record.version} ({record.provenance}), sha256 {record.sha256}"
        )


@app.command("scaffold")
def scaffold_command(
    name: Annotated[str, typer.Argument(help="Model name.")],
    out: Annotated[Path, typer.Argument(help="File to write.")],
) -> None:
    """Write an UNTRAINED checkpoint of the exact architecture in the published format."""
    _check_name(name)
    scaffold(name, out)
    typer.echo(f"{out}: untrained {name} checkpoint (plumbing tests, benchmarks, start of site training)")
