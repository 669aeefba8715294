"""Installing weights: ``import`` a file, ``pull`` the published ones, ``scaffold`` an untrained one.

How ``import`` recognises a file (the published sha256 values are unknown here; MONAI publishes md5,
TorchXRayVision nothing):

1. Its sha256, then its md5, is compared with every manifest's published hashes. A match names the
   model and makes the weights ``published`` with the manifest's version.
2. Otherwise the file is read (a pickled module by ``models.pickled_model``, which runs none of its
   code, or a weights_only state dict) and its state dict is checked against every architecture: the
   one whose keys and shapes fit exactly is the model (``--model NAME`` instead pins it and skips the
   guessing).
3. What the file then is:
   * written by ``scaffold`` (it carries a marker) → ``scaffold-<sha8>``: untrained, plumbing only;
   * ``--site`` → site-trained weights of this architecture, version ``site-<sha8>``;
   * ``--model NAME`` for a model that publishes no hash at all (TorchXRayVision) → accepted as
     ``published-unpinned`` with the manifest version; the sha256 is printed to pin in the manifest;
   * anything else is refused: a file that claims to be published must match the published hash.

The installed ``model.pt`` is always a plain state dict that loads with ``weights_only=True``; a pickled
module is converted here, once, after its hashes were checked. Nothing here runs during a job.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from models.architectures import architecture_problems, build_network, check_architecture
from models.errors import DownloadError, UnrecognisedWeightsError
from models.legacy_writer import write_legacy_pickled_module
from models.loader import WeightsRecord, file_hashes, weights_path, write_record
from models.manifest import MODEL_NAMES, ModelManifest, load_manifest
from models.pickled_model import (
    SCAFFOLD_MARKER,
    PickledModelError,
    is_scaffold,
    load_pickled_module,
    pickled_state_dict,
)

MIRROR_ENV = "DICOM_NODE_MODELS_MIRROR"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _read_any(path: Path) -> tuple[OrderedDict[str, torch.Tensor], bool, str]:
    """(state dict, written by scaffold?, format) of a file in either published format."""
    try:
        module = load_pickled_module(path)
    except PickledModelError as pickled_error:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UnrecognisedWeightsError(
                f"{path.name} is neither a pickled model ({pickled_error}) nor a plain state dict "
                f"({type(exc).__name__}); import the file as published, not a renamed or re-saved one"
            ) from exc
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            obj = obj["model"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise UnrecognisedWeightsError(f"{path.name} holds no state dict of tensors") from None
        state = OrderedDict(obj)
        metadata = getattr(obj, "_metadata", None) or {}
        scaffold = bool(metadata.get("", {}).get(SCAFFOLD_MARKER, False))
        return state, scaffold, "state-dict"
    return pickled_state_dict(module), is_scaffold(module), "pickled-module"


def _by_hash(manifests: list[ModelManifest], sha256: str, md5: str) -> ModelManifest | None:
    for manifest in manifests:
        published = manifest.weights
        if (published.sha256 and published.sha256 == sha256) or (published.md5 and published.md5 == md5):
            return manifest
    return None


def _by_architecture(state: OrderedDict[str, torch.Tensor], path: Path) -> str:
    fitting = [name for name in MODEL_NAMES if not architecture_problems(name, state)]
    if len(fitting) != 1:
        raise UnrecognisedWeightsError(
            f"{path.name} fits none of the known architectures ({', '.join(MODEL_NAMES)}): pass "
            "--model NAME to see what differs"
        )
    return fitting[0]


def import_weights(
    path: Path,
    models_dir: Path,
    *,
    model: str | None = None,
    site: bool = False,
    published_only: bool = False,
) -> WeightsRecord:
    """Install ``path`` as a model's weights after checking hashes and architecture; see module doc.

    ``published_only`` (used by ``pull``) refuses anything but the published file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    manifests = [load_manifest(models_dir, n) for n in ([model] if model else MODEL_NAMES)]
    source_sha256, source_md5 = file_hashes(path)
    published = None if site else _by_hash(manifests, source_sha256, source_md5)
    state, scaffold, fmt = _read_any(path)
    name = published.name if published else (model or _by_architecture(state, path))
    manifest = load_manifest(models_dir, name)
    check_architecture(name, state, path.name)
    if published is not None:
        provenance, version = "published", manifest.version
    elif scaffold:
        provenance, version = "scaffold", f"scaffold-{source_sha256[:8]}"
    elif site:
        provenance, version = "site", f"site-{source_sha256[:8]}"
    elif model and not manifest.weights.sha256 and not manifest.weights.md5:
        if fmt != manifest.weights.format:
            raise UnrecognisedWeightsError(
                f"{path.name} is a {fmt} file but {name} is published as a {manifest.weights.format} file: "
                "pass --site if these are site-trained weights"
            )
        provenance, version = "published-unpinned", manifest.version
    else:
        raise UnrecognisedWeightsError(
            f"{path.name} (sha256 {source_sha256}, md5 {source_md5}) matches no published hash of {name}: "
            f"download the published file again (`dicom-node models pull {name}`), or pass --site if these "
            "are weights trained at this site"
        )
    if published_only and provenance not in ("published", "published-unpinned"):
        raise UnrecognisedWeightsError(
            f"{path.name} (sha256 {source_sha256}, md5 {source_md5}) matches no published hash of "
            f"{name}: the URL or mirror serves another file; nothing was installed"
        )
    target = weights_path(models_dir, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # Always re-save as a plain state dict: workers then load with weights_only=True.
        torch.save(state, tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    sha256, _ = file_hashes(target)
    record = WeightsRecord(
        model=name,
        version=version,
        provenance=provenance,
        sha256=sha256,
        source_name=path.name,
        source_sha256=source_sha256,
        source_md5=source_md5,
        imported_at=_now(),
    )
    write_record(models_dir, record)
    return record


def download(url: str, target: Path, *, timeout_s: float = 60.0) -> None:
    """Fetch ``url`` into ``target`` through a ``.part`` file renamed only on success."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, part.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"could not download {url}: {exc}; check the network or use a mirror") from exc
    part.replace(target)


def pull(
    models_dir: Path,
    names: list[str] | None = None,
    *,
    url: str | None = None,
    mirror: str | None = None,
) -> list[WeightsRecord]:
    """Download the published weights of ``names`` (default all) and import them.

    ``url`` replaces the official URL (one model only); ``mirror`` (or ``$DICOM_NODE_MODELS_MIRROR``)
    is a base URL serving the files under their official basenames. A download that is not the
    published file is refused by ``import_weights``, exactly like a local file.
    """
    names = names or list(MODEL_NAMES)
    if url and len(names) != 1:
        raise ValueError('Argument "url" needs exactly one model name.')
    mirror = mirror or os.environ.get(MIRROR_ENV)
    records = []
    for name in names:
        manifest = load_manifest(models_dir, name)
        official = manifest.weights.url
        source = url or (f"{mirror.rstrip('/')}/{official.rsplit('/', 1)[-1]}" if mirror else official)
        target = models_dir / name / "downloads" / official.rsplit("/", 1)[-1]
        download(source, target)
        records.append(import_weights(target, models_dir, model=name, published_only=True))
    return records


def _txrv_class_path(module: nn.Module) -> tuple[str, str]:
    cls = type(module)
    if cls.__module__.startswith("torch.nn"):
        return cls.__module__, cls.__name__
    names = {
        "XrvDenseNet121": "DenseNet",
        "DenseBlock": "_DenseBlock",
        "DenseLayer": "_DenseLayer",
        "Transition": "_Transition",
    }
    return "torchxrayvision.models", names[cls.__name__]


def scaffold(name: str, out: Path, *, seed: int = 0) -> Path:
    """Write an untrained checkpoint of the model's exact architecture in its published format.

    TorchXRayVision: a pickled whole module (legacy torch.save stream, classes named as in
    torchxrayvision). MONAI bundles: a bare state dict. Both carry a marker so that ``import`` records
    them as ``scaffold-<sha8>``: never to be presented as analysis.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        network = build_network(name)
    finally:
        torch.random.set_rng_state(generator_state)
    manifest_format = {"txrv-densenet121-res224-all": "pickled-module"}.get(name, "state-dict")
    out.parent.mkdir(parents=True, exist_ok=True)
    if manifest_format == "pickled-module":
        write_legacy_pickled_module(network, out, _txrv_class_path, {SCAFFOLD_MARKER: True})
    else:
        state = network.state_dict()
        # state_dict() sets ``_metadata`` on the OrderedDict it returns; torch's annotations omit it.
        vars(state)["_metadata"][""][SCAFFOLD_MARKER] = True
        torch.save(state, out)
    return out
