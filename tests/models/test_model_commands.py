"""``dicom-node models`` through typer's CliRunner, with ``pull`` against a loopback HTTP server."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_node.cli.models import app
from models.loader import file_hashes
from tests.models.test_loading import pin_md5

runner = CliRunner()
WHOLEBODY = "monai-wholebody-ct-segmentation"
OFFICIAL_BASENAME = "model_wholebody_ct_segmentation.pt"


@pytest.fixture()
def mirror(tmp_path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server serving ``tmp_path/www`` (stopped in ``finally``)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_list_scaffold_import_verify(models_dir, tmp_path):
    result = runner.invoke(app, ["list", "--models-dir", str(models_dir)])
    assert result.exit_code == 0 and result.output.count("not installed") == 3
    assert runner.invoke(app, ["verify", "--models-dir", str(models_dir)]).exit_code == 1
    out = tmp_path / "txrv.pt"
    assert runner.invoke(app, ["scaffold", "txrv-densenet121-res224-all", str(out)]).exit_code == 0
    result = runner.invoke(app, ["import", str(out), "--models-dir", str(models_dir)])
    assert result.exit_code == 0, result.output
    assert "scaffold-" in result.output and "UNTRAINED" in result.output
    result = runner.invoke(app, ["list", "--json", "--models-dir", str(models_dir)])
    assert '"provenance": "scaffold"' in result.output


def test_import_of_an_unknown_file_fails_with_exit_1(models_dir, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    result = runner.invoke(app, ["import", str(junk), "--models-dir", str(models_dir)])
    assert result.exit_code == 1 and "neither a pickled model" in result.output


def test_unknown_model_name_is_a_usage_error(models_dir, tmp_path):
    result = runner.invoke(app, ["scaffold", "no-such-model", str(tmp_path / "x.pt")])
    assert result.exit_code == 2


@pytest.mark.slow
def test_pull_fetches_from_a_mirror_and_verifies_the_published_hash(models_dir, mirror, monkeypatch):
    base_url, root = mirror
    served = root / OFFICIAL_BASENAME
    assert runner.invoke(app, ["scaffold", WHOLEBODY, str(served)]).exit_code == 0
    # The real manifest's md5 is the published file's: a different file from the mirror is refused.
    result = runner.invoke(app, ["pull", WHOLEBODY, "--mirror", base_url, "--models-dir", str(models_dir)])
    assert result.exit_code == 1 and "matches no published hash" in result.output
    # With the manifest publishing this file's md5, the same download is recognised and installed.
    pin_md5(models_dir, WHOLEBODY, served)
    monkeypatch.setenv("DICOM_NODE_MODELS_MIRROR", base_url)
    result = runner.invoke(app, ["pull", WHOLEBODY, "--models-dir", str(models_dir)])
    assert result.exit_code == 0, result.output
    assert "(published)" in result.output
    assert (models_dir / WHOLEBODY / "downloads" / OFFICIAL_BASENAME).is_file()
    assert file_hashes(models_dir / WHOLEBODY / "downloads" / OFFICIAL_BASENAME) == file_hashes(served)


def test_pull_reports_an_unreachable_url(models_dir):
    url = "http://127.0.0.1:9/model.pt"
    result = runner.invoke(app, ["pull", WHOLEBODY, "--url", url, "--models-dir", str(models_dir)])
    assert result.exit_code == 1 and "could not download" in result.output
