from __future__ import annotations

from pathlib import Path

import pytest

from csvcompress.config import Settings, load_settings, replace_settings, settings_from_dict
from csvcompress.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_matches_the_defaults() -> None:
    # config.toml documents every default; drift between the two would mislead users.
    assert load_settings(ROOT / "config.toml", environ={}) == Settings()


def test_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}) == Settings()


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_env_names_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 9999\n")
    settings = load_settings(environ={"CSVCOMPRESS_CONFIG": str(path)})
    assert settings.server.port == 9999


def test_env_overrides_single_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[images]\nquality = 70\n")
    settings = load_settings(
        path,
        environ={
            "CSVCOMPRESS_IMAGES_QUALITY": "40",
            "CSVCOMPRESS_FETCH_ALLOWED_NETWORKS": '["10.0.0.0/8"]',
            "CSVCOMPRESS_SERVER_HOST": "0.0.0.0",
        },
    )
    assert settings.images.quality == 40
    assert settings.fetch.allowed_networks == ("10.0.0.0/8",)
    assert settings.server.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"server": {"prot": 1}}, "unknown setting: server.prot"),
        ({"sever": {}}, "unknown setting: sever"),
        ({"server": {"port": "80"}}, "server.port: must be a whole number, not '80'"),
        ({"server": {"port": 70000}}, "server.port: must be between 0 and 65535"),
        ({"images": {"quality": 0}}, "images.quality: must be between 1 and 100"),
        ({"images": {"format": "bmp"}}, "images.format: must be one of"),
        ({"images": {"scale": 2}}, "images.scale: must be in (0, 1]"),
        ({"fetch": {"allowed_networks": ["nope"]}}, "'nope' is not a network"),
        ({"fetch": {"allowed_networks": "10.0.0.0/8"}}, "fetch.allowed_networks: must be a list"),
        ({"storage": {"backend": "ftp"}}, "storage.backend: must be"),
        ({"storage": {"backend": "s3"}}, "storage.s3.bucket: is required"),
        ({"cluster": {"mode": "many"}}, "cluster.mode: must be"),
        ({"cluster": {"mode": "distributed"}}, "database.url: is required"),
        ({"database": {"url": "mysql://x"}}, "database.url: must start with postgresql://"),
        (
            {"storage": {"cloudinary": {"concurrency": 0}}},
            "storage.cloudinary.concurrency: must be at least 1",
        ),
        (
            {"storage": {"cloudinary": {"upload_prefix": "api.example"}}},
            "storage.cloudinary.upload_prefix: must start with http:// or https://",
        ),
        (
            {"storage": {"cloudinary": {"secret": "x"}}},
            "unknown setting: storage.cloudinary.secret",
        ),
        ({"webhook": {"retry_schedule": [1, -1]}}, "webhook.retry_schedule: entries must be"),
        ({"images": {"optimize_coding": 1}}, "images.optimize_coding: must be true or false"),
        ({"images": {"engine": "magick"}}, "images.engine: must be one of"),
        ({"workers": {"nice": 20}}, "workers.nice: must be between 0 and 19"),
        ({"server": 3}, "server: must be a table"),
        ({"retention": {"days": -1}}, "retention.days: must be 0 or more"),
        ({"retention": {"interval": 0}}, "retention.interval: must be positive"),
        ({"log": {"format": "yaml"}}, 'log.format: must be "text" or "json"'),
    ],
)
def test_bad_settings_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw)
    assert message in info.value.message


def test_bad_toml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, environ={})


def test_floats_accept_whole_numbers_and_base_url_is_derived() -> None:
    settings = settings_from_dict({"fetch": {"timeout": 5}, "server": {"host": "0.0.0.0"}})
    assert settings.fetch.timeout == 5.0
    assert settings.server.base_url == "http://127.0.0.1:8080"
    public = replace_settings(settings, server={"public_url": "https://img.example.com/"})
    assert public.server.base_url == "https://img.example.com"


def test_replace_settings_merges_nested_tables() -> None:
    settings = replace_settings(
        Settings(), storage={"backend": "cloudinary", "cloudinary": {"folder": "shop"}}
    )
    assert settings.storage.backend == "cloudinary"
    assert settings.storage.cloudinary.folder == "shop"
    # Keys not named keep their values.
    assert settings.storage.cloudinary.concurrency == 8
    assert settings.storage.dir == "data/storage"
    with pytest.raises(ConfigError, match=r"storage\.cloudinary\.attempts: must be at least 1"):
        replace_settings(settings, storage={"cloudinary": {"attempts": 0}})


def test_an_unknown_key_suggests_the_known_one_and_says_where_it_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nprot = 9000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert info.value.message == f"unknown setting: server.prot; did you mean port? (set in {path})"
    with pytest.raises(ConfigError) as info:
        monkeypatch.chdir(tmp_path)  # no ./config.toml
        load_settings(environ={"CSVCOMPRESS_SERVER_PROT": "1"})
    assert info.value.message == (
        "unknown setting: server.prot; did you mean port? (set in CSVCOMPRESS_SERVER_PROT)"
    )


def test_a_bad_value_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"CSVCOMPRESS_SERVER_PORT": "99999"})
    assert info.value.message == (
        "server.port: must be between 0 and 65535 (set in CSVCOMPRESS_SERVER_PORT)"
    )


def test_a_list_from_the_environment_may_be_comma_separated() -> None:
    # As a user types it in a shell; the TOML form keeps working.
    for value in ("127.0.0.0/8", "127.0.0.0/8, 10.0.0.0/8", '["127.0.0.0/8", "10.0.0.0/8"]'):
        settings = load_settings(environ={"CSVCOMPRESS_FETCH_ALLOWED_NETWORKS": value})
        assert settings.fetch.allowed_networks[0] == "127.0.0.0/8"
    settings = load_settings(
        environ={"CSVCOMPRESS_FETCH_ALLOWED_NETWORKS": "127.0.0.0/8,10.0.0.0/8"}
    )
    assert settings.fetch.allowed_networks == ("127.0.0.0/8", "10.0.0.0/8")


def test_a_string_where_the_file_needs_a_list_shows_the_accepted_form(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[fetch]\nallowed_networks = "10.0.0.0/8"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert info.value.message == (
        "fetch.allowed_networks: must be a list, not '10.0.0.0/8': [\"10.0.0.0/8\"] in"
        f" config.toml, or a comma-separated list in the environment (set in {path})"
    )
