"""Settings: defaults < TOML < environment < flags, and every bad value named."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.config import ConfigError, load_settings, parse_address, parse_ae_title


def test_precedence(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text(
        'ae_title = "FROMTOML"\nport = 104\nquiet_period = 5\n'
        '[access]\nallowed_ae_titles = ["CT1"]\nallowed_networks = ["10.1.0.0/16"]\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "10.1.2.3"\nport = 104\n'
    )
    settings = load_settings(config, environ={"DICOM_NODE_PORT": "11113"}, ae_title="FROMFLAG")
    assert settings.ae_title == "FROMFLAG"
    assert settings.port == 11113
    assert settings.quiet_period == 5
    assert settings.access.ae_allowed("CT1") and not settings.access.ae_allowed("CT2")
    assert settings.access.address_allowed("10.1.200.4") and not settings.access.address_allowed("127.0.0.1")
    assert settings.destination("pacs").address == "PACS@10.1.2.3:104"


def test_defaults_follow_the_design():
    settings = load_settings(environ={})
    assert (settings.ae_title, settings.port, settings.quiet_period) == ("DICOMNODE", 11112, 30.0)
    assert settings.effective_database_url.startswith("sqlite:///")
    assert settings.effective_database_url.endswith("var/index.sqlite3")


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"DICOM_NODE_PORT": "eleven"}, "DICOM_NODE_PORT"),
        ({"DICOM_NODE_PORT": "70000"}, "DICOM_NODE_PORT"),
        ({"DICOM_NODE_QUIET_PERIOD": "-1"}, "DICOM_NODE_QUIET_PERIOD"),
        ({"DICOM_NODE_AE_TITLE": ""}, "DICOM_NODE_AE_TITLE"),
        ({"DICOM_NODE_CONFIG": "/nonexistent.toml"}, "does not exist"),
    ],
)
def test_bad_values_are_named(environ, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(environ=environ)


def test_ae_titles_and_addresses():
    assert parse_ae_title("  PACS ") == "PACS"
    with pytest.raises(ConfigError):
        parse_ae_title("A\\B")
    assert parse_address("ORTHANC@127.0.0.1:4242").port == 4242
    with pytest.raises(ConfigError):
        parse_address("ORTHANC@localhost")


def test_untrained_weights_are_allowed_only_by_the_analysis_table(tmp_path: Path):
    assert load_settings(environ={}).allow_untrained is False
    config = tmp_path / "node.toml"
    config.write_text("[analysis]\nallow_untrained = true\n")
    assert load_settings(config, environ={}).allow_untrained is True
    for text, named in (
        ("[analysis]\nallow_untrained = 'maybe'\n", "analysis.allow_untrained"),
        ("[analysis]\nallow_untrusted = true\n", "analysis: unknown keys ['allow_untrusted']"),
        ("allow_untrained = true\n", "allow_untrained cannot be set here"),
    ):
        config.write_text(text)
        with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
            load_settings(config, environ={})
