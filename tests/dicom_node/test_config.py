"""Settings: defaults < TOML < environment < flags, and every bad value named."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from dicom_node.config import (
    PIPELINES,
    REPORT_PROFILES,
    ConfigError,
    InvalidSettingsError,
    Settings,
    load_settings,
    parse_address,
    parse_ae_title,
    redact_url,
    resolve_settings,
)


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


# --- every value checked at load, every problem reported with its name --------------------------------

MINIMAL_DESTINATION = '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "10.1.2.3"\nport = 104\n'
CT_ROUTE = '[[routes]]\npipeline = "ct-lung-nodules"\n[routes.match]\nmodality = "CT"\n'


def _problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None, **flags) -> str:
    config = tmp_path / "node.toml"
    config.write_text(text)
    with pytest.raises(InvalidSettingsError) as caught:
        load_settings(config, environ=environ or {}, **flags)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[acess]\nallowed_ae_titles = ["CT1"]\n', "acess: unknown section; did you mean 'access'?"),
        ('[TLS]\ncertificate = "a"\n', "TLS: unknown section; did you mean 'tls'?"),
        ("quiet_periode = 3\n", "quiet_periode: unknown setting; did you mean 'quiet_period'?"),
        ("[timeouts]\ndimsee = 3\n", "timeouts.dimsee: unknown key; did you mean 'dimse'?"),
        ("[jobs]\nmax_atempts = 3\n", "jobs.max_atempts: unknown key; did you mean 'max_attempts'?"),
        (
            MINIMAL_DESTINATION + MINIMAL_DESTINATION.replace("pacs", "pacs2") + 'profil = "ohif"\n',
            "destinations[1].profil: unknown key; did you mean 'profile'?",
        ),
        (
            CT_ROUTE + 'colour = "red"\n',
            "routes[0] (ct-lung-nodules).match.colour: unknown criterion; known: modality",
        ),
        (
            CT_ROUTE + '[[routes.match_any]]\nbodypart = ["CHEST"]\n',
            "routes[0] (ct-lung-nodules).match_any[0].bodypart: unknown criterion; did you mean 'body_part'?",
        ),
        (
            CT_ROUTE.replace("[routes.match]", "quiet = 3\n[routes.match]"),
            "routes[0] (ct-lung-nodules).quiet",
        ),
    ],
)
def test_unknown_keys_are_named_with_the_closest_valid_name(tmp_path: Path, text: str, expected: str):
    assert expected in _problems(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            CT_ROUTE.replace("[routes.match]", 'quiet_period = "2m"\n[routes.match]'),
            "routes[0] (ct-lung-nodules).quiet_period: expected a number of seconds, e.g. 120, got '2m'",
        ),
        ('quiet_period = "90s"\n', "quiet_period: expected a number of seconds, e.g. 90, got '90s'"),
        ('max_study_age = "6h"\n', "max_study_age: expected a number of seconds, e.g. 21600, got '6h'"),
        ("series_quiet_period = -1\n", "series_quiet_period: expected a number of seconds, 0 or more"),
        ("shutdown_grace = true\n", "shutdown_grace: expected a number of seconds"),
        ('shutdown_grace = "inf"\n', "shutdown_grace: expected a number of seconds"),
        ("[timeouts]\nacse = 0\n", "timeouts.acse: expected a number of seconds, more than 0, got 0"),
        ('[jobs]\nrunning_lease = "2 min"\n', "jobs.running_lease: expected a number of seconds, e.g. 120"),
        ('retention_days = "30d"\n', "retention_days: expected a number of days, e.g. 30, got '30d'"),
    ],
)
def test_durations_are_numbers_of_seconds(tmp_path: Path, text: str, expected: str):
    assert expected in _problems(tmp_path, text)


def test_numeric_strings_are_durations_too(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text("quiet_period = 90\n[jobs]\nrunning_lease = 2.5\n")
    settings = load_settings(config, environ={"DICOM_NODE_SERIES_QUIET_PERIOD": "0.5"})
    assert (settings.quiet_period, settings.series_quiet_period, settings.jobs.running_lease) == (
        90,
        0.5,
        2.5,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('ae_title = "A\\\\B"\n', "ae_title: an AE title may hold printable ASCII only"),
        ('ae_title = "SEVENTEEN_LETTERS"\n', "ae_title: an AE title must have 1 to 16 characters"),
        ("port = 70000\n", "port: expected a port number (0–65535), got 70000"),
        ('host = "not a host"\n', "host: expected a host name or IP address"),
        ('data_dir = ""\n', "data_dir: expected a path, got ''"),
        ("max_associations = 0\n", "max_associations: expected a whole number (1 or more), got 0"),
        ("max_pdu = 1.5\n", "max_pdu: expected a whole number, got 1.5"),
        ('log_level = "LOUD"\n', "log_level: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ('database_url = "postgres"\n', "database_url: expected a SQLAlchemy URL"),
        ('broker_url = "redis//localhost"\n', "broker_url: expected a broker URL such as redis://"),
        ('[access]\nallowed_networks = ["10.0.0.0/33"]\n', "access.allowed_networks[0]: expected a network"),
        ('[access]\nallowed_ae_titles = [""]\n', "access.allowed_ae_titles[0]: an AE title must have"),
        ("[jobs]\nmax_attempts = 0\n", "jobs.max_attempts: expected a whole number (1 or more), got 0"),
        (
            "[jobs]\ndelivery_backoff = 60\ndelivery_backoff_max = 10\n",
            "jobs.delivery_backoff_max: must be at least delivery_backoff (60), got 10",
        ),
        ('[jobs]\nplugins = ["my site"]\n', "jobs.plugins[0]: expected a Python module name"),
        ('tls = "yes"\n', "tls: expected a table, got 'yes'"),
        ('[routes]\npipeline = "ct-vertebrae"\n', "routes: expected a list ([[routes]] tables)"),
        ('[jobs]\nsend_to_caller = "maybe"\n', "jobs.send_to_caller: expected true or false, got 'maybe'"),
        ('[tls]\ncertificate = "/nonexistent.crt"\n', "tls.certificate: no such file: '/nonexistent.crt'"),
        ('[tls]\ncertificate = "/nonexistent.crt"\n', "tls.private_key: is required"),
        (MINIMAL_DESTINATION.replace("104", "0"), "destinations[0].port: expected a port number (1–65535)"),
        (
            MINIMAL_DESTINATION + 'profile = "fancy"\n',
            "destinations[0].profile: unknown report profile 'fancy'",
        ),
        (MINIMAL_DESTINATION * 2, "destinations: destination names must differ; given more than once: pacs"),
        (
            CT_ROUTE.replace("[routes.match]", 'select = "thickest"\n[routes.match]'),
            "routes[0] (ct-lung-nodules).select: select is one of thinnest, most_instances, first",
        ),
        (
            CT_ROUTE + 'orientation = "axail"\n',
            "routes[0] (ct-lung-nodules).match.orientation: orientation is",
        ),
        (CT_ROUTE + 'slice_thickness = "thin"\n', "routes[0] (ct-lung-nodules).match.slice_thickness"),
        (CT_ROUTE + 'series_description = "("\n', ".match.series_description: not a regular expression"),
        (
            '[[routes]]\npipeline = "ct-lung-nodules"\n[routes.match]\nseries_description = "chest"\n',
            "routes[0] (ct-lung-nodules).match: modality is required",
        ),
        (
            '[[routes]]\npipeline = "ct-lung-nodules"\n',
            "routes[0] (ct-lung-nodules).match: modality is required",
        ),
        (
            CT_ROUTE.replace("ct-lung-nodules", "ct-lung-nodule"),
            "routes[0] (ct-lung-nodule).pipeline: unknown pipeline 'ct-lung-nodule'; "
            "did you mean 'ct-lung-nodules'?",
        ),
        (
            CT_ROUTE.replace("[routes.match]", 'requires = ["lung"]\n[routes.match]'),
            "routes[0] (ct-lung-nodules).requires: unknown content check 'lung' (did you mean 'lungs'?): "
            "requires takes lungs, spine",
        ),
        (
            CT_ROUTE.replace("[routes.match]", "requires = [1]\n[routes.match]"),
            "routes[0] (ct-lung-nodules).requires: requires is a list of content checks (lungs, spine)",
        ),
    ],
)
def test_every_value_is_checked_at_load(tmp_path: Path, text: str, expected: str):
    assert expected in _problems(tmp_path, text)


def test_a_route_may_require_content_checks(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text(CT_ROUTE.replace("[routes.match]", 'requires = ["Lungs", "spine"]\n[routes.match]'))
    assert load_settings(config, environ={}).routes[0].requires == ("lungs", "spine")


def test_plugins_allow_their_own_pipeline_names(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text(
        '[jobs]\nplugins = ["tests.jobs.fixed_pipeline"]\n'
        + CT_ROUTE.replace("ct-lung-nodules", "fixed-cost")
    )
    assert load_settings(config, environ={}).routes[0].pipeline == "fixed-cost"


def test_every_problem_is_reported_at_once_with_where_it_came_from(tmp_path: Path):
    text = (
        '[acess]\nallowed_ae_titles = ["CT1"]\n'
        + MINIMAL_DESTINATION
        + 'profile = "fancy"\n'
        + CT_ROUTE.replace("[routes.match]", 'quiet_period = "2m"\n[routes.match]')
    )
    message = _problems(
        tmp_path,
        text,
        environ={"DICOM_NODE_PORT": "eleven", "DICOM_NODE_JOBS__MAX_ATTEMPTS": "none"},
        host="bad host",
    )
    assert message.startswith(f"6 problems in {tmp_path / 'node.toml'}:\n")
    for expected in (
        "acess: unknown section; did you mean 'access'?",
        "destinations[0].profile: unknown report profile 'fancy'; one of standard, ohif, labelmap",
        "routes[0] (ct-lung-nodules).quiet_period: expected a number of seconds, e.g. 120, got '2m'",
        "DICOM_NODE_PORT: expected a port number, got 'eleven'",
        "DICOM_NODE_JOBS__MAX_ATTEMPTS: expected a whole number, got 'none'",
        "--host: expected a host name or IP address, got 'bad host'",
    ):
        assert f"  - {expected}\n" in message + "\n"


def test_toml_syntax_and_json_variables_are_named(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text("port = \n")
    with pytest.raises(ConfigError, match=f"config file {config}: not valid TOML"):
        load_settings(config, environ={})
    with pytest.raises(ConfigError, match="DICOM_NODE_ACCESS: not valid JSON"):
        load_settings(environ={"DICOM_NODE_ACCESS": "CT1"})
    with pytest.raises(ConfigError, match="_env_file: unknown setting"):
        config.write_text('_env_file = "/etc/passwd"\n')
        load_settings(config, environ={})


def test_origins_flag_env_file_default(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text(
        'ae_title = "FROMTOML"\nquiet_period = 5\n[jobs]\nrunning_lease = 30\n' + MINIMAL_DESTINATION
    )
    resolved = resolve_settings(
        config,
        environ={
            "DICOM_NODE_CONFIG": "/ignored/when/a/flag/names/one.toml",
            "DICOM_NODE_PORT": "11113",
            "DICOM_NODE_QUIET_PERIOD": "7",
            "DICOM_NODE_JOBS__MAX_ATTEMPTS": "5",
            "DICOM_NODE_ACCESS__ALLOWED_AE_TITLES": "CT1, CT2",
        },
        ae_title="FROMFLAG",
        host=None,
    )
    settings = resolved.settings
    assert (settings.ae_title, settings.port, settings.quiet_period) == ("FROMFLAG", 11113, 7.0)
    assert (settings.jobs.max_attempts, settings.jobs.running_lease) == (5, 30.0)
    assert settings.access.allowed_ae_titles == ("CT1", "CT2")
    assert resolved.config_file == config
    assert str(resolved.origin("ae_title")) == "flag --ae-title"
    assert str(resolved.origin("port")) == "env DICOM_NODE_PORT"
    assert str(resolved.origin("quiet_period")) == "env DICOM_NODE_QUIET_PERIOD"
    assert str(resolved.origin("jobs", "max_attempts")) == "env DICOM_NODE_JOBS__MAX_ATTEMPTS"
    assert str(resolved.origin("jobs", "running_lease")) == f"file {config}"
    assert str(resolved.origin("destinations")) == f"file {config}"
    assert str(resolved.origin("access", "allowed_ae_titles")) == "env DICOM_NODE_ACCESS__ALLOWED_AE_TITLES"
    assert str(resolved.origin("host")) == "default"
    assert str(resolved.origin("jobs", "plugins")) == "default"


def test_settings_are_frozen_and_copied_with_changes():
    settings = Settings(port=0)
    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1  # type: ignore[misc]
    copy = settings.model_copy(update={"port": 104})
    assert (settings.port, copy.port) == (0, 104)
    with pytest.raises(ValidationError):
        Settings(port=-1)


def test_passwords_are_redacted():
    assert (
        redact_url("postgresql+psycopg://node:s3cret@db:5432/node")
        == "postgresql+psycopg://node:***@db:5432/node"
    )
    assert redact_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact_url("redis://redis:6379/0") == "redis://redis:6379/0"
    assert redact_url("sqlite:////var/index.sqlite3") == "sqlite:////var/index.sqlite3"


def test_profile_names_are_the_ones_reports_offers():
    from dicom_node.reports.profile import PROFILES

    assert tuple(PROFILES) == REPORT_PROFILES


def test_an_unknown_profile_is_refused_by_the_writer_too():
    from dicom_node.jobs.registry import write_with_reports

    with pytest.raises(ConfigError, match="unknown report profile 'fancy'; one of standard, ohif, labelmap"):
        write_with_reports(None, [], "fancy", None)  # refused before the context is read


def test_pipeline_names_are_the_ones_the_registry_offers():
    from pipelines.registry import PIPELINE_NAMES

    assert PIPELINES == PIPELINE_NAMES


def test_tls_files_must_exist_and_client_certificates_need_a_ca(tmp_path: Path):
    for name in ("server.crt", "server.key"):
        (tmp_path / name).write_text("PEM\n")
    tls = f'[tls]\ncertificate = "{tmp_path / "server.crt"}"\nprivate_key = "{tmp_path / "server.key"}"\n'
    assert "tls.require_client_certificate: needs tls.ca_certificates" in _problems(
        tmp_path, tls + "require_client_certificate = true\n"
    )
    message = _problems(
        tmp_path, tls + f'ca_certificates = "{tmp_path}"\nrequire_client_certificate = true\n'
    )
    assert message.startswith(f"tls.ca_certificates: not a file: '{tmp_path}'")
    assert "needs tls.ca_certificates" not in message
    config = tmp_path / "node.toml"
    config.write_text(tls)
    settings = load_settings(config, environ={})
    assert settings.tls is not None and settings.tls.private_key == tmp_path / "server.key"


def test_destination_tls_settings_need_tls_and_go_together(tmp_path: Path):
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("PEM\n")
    peer = '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "pacs.example.org"\nport = 2762\n'
    ca = f'ca_certificates = "{tmp_path / "ca.crt"}"\n'
    assert "destinations[0]: ca_certificates given but tls is not true" in _problems(tmp_path, peer + ca)
    half = f'certificate = "{tmp_path / "client.crt"}"\n'
    assert "certificate and private_key go together" in _problems(tmp_path, peer + "tls = true\n" + half)
    assert "destinations[0].ca_certificates: no such file" in _problems(
        tmp_path, peer + f'tls = true\nca_certificates = "{tmp_path / "missing.crt"}"\n'
    )
    config = tmp_path / "node.toml"
    config.write_text(peer + "tls = true\n" + ca + half + f'private_key = "{tmp_path / "client.key"}"\n')
    destination = load_settings(config, environ={}).destination("pacs")
    assert destination.tls and destination.private_key == tmp_path / "client.key"


def test_untrained_weights_are_allowed_only_by_the_analysis_table(tmp_path: Path):
    assert load_settings(environ={}).allow_untrained is False
    config = tmp_path / "node.toml"
    config.write_text("[analysis]\nallow_untrained = true\n")
    assert load_settings(config, environ={}).allow_untrained is True
    assert "analysis.allow_untrained" in _problems(tmp_path, "[analysis]\nallow_untrained = 'maybe'\n")
    message = _problems(tmp_path, "[analysis]\nallow_untrusted = true\n")
    assert "analysis.allow_untrusted" in message and "allow_untrained" in message
    assert "allow_untrained" in _problems(tmp_path, "allow_untrained = true\n")
