"""The hub's secrets: from files, the environment or a private TOML file; never flags, never shown."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cloud_hub.settings import OPTIONS, HubSettings, resolve_settings
from shared.errors import ConfigError
from shared.secret_file import write_private

pytestmark = pytest.mark.timeout(10)

READ = "read-Pw7-0123456789abcdef"
ADMIN = "admin-Pw7-0123456789abcdef"
BROKER_PW = "broker-Pw7-0123456789"


def _resolve(*flags: str, env: dict[str, str] | None = None) -> HubSettings:
    args = OPTIONS.add_to(argparse.ArgumentParser()).parse_args(list(flags))
    return resolve_settings(args, env=env or {}, serving=True)


def _files(tmp_path: Path) -> list[str]:
    write_private(tmp_path / "read", READ + "\n")
    write_private(tmp_path / "admin", ADMIN + "\n")
    return [
        "--read-token-file",
        str(tmp_path / "read"),
        "--admin-token-file",
        str(tmp_path / "admin"),
    ]


def _assert_hidden(text: str) -> None:
    for secret in (READ, ADMIN, BROKER_PW):
        assert secret not in text, text


def test_tokens_from_files_and_a_broker_password_file(tmp_path: Path) -> None:
    write_private(tmp_path / "broker", BROKER_PW + "\n")
    s = _resolve(
        *_files(tmp_path),
        "--broker",
        "mqtt://hub@broker.local:1883",
        "--broker-password-file",
        str(tmp_path / "broker"),
    )
    assert (s.read_token, s.admin_token) == (READ, ADMIN)
    assert s.external_broker().password == BROKER_PW
    assert s.sources["read_token"] == f"file {tmp_path / 'read'}"
    _assert_hidden(repr(s))
    _assert_hidden(str(s))


def test_tokens_from_the_environment_still_work_and_are_hidden_in_repr() -> None:
    s = _resolve(
        env={
            "EDGELOOP_HUB_READ_TOKEN": READ,
            "EDGELOOP_HUB_ADMIN_TOKEN": ADMIN,
            "EDGELOOP_HUB_BROKER": f"mqtt://hub:{BROKER_PW}@broker.local:1883",
        }
    )
    assert s.read_token == READ and s.external_broker().password == BROKER_PW
    _assert_hidden(repr(s))
    assert "mqtt://hub:***@broker.local:1883" in repr(s)


@pytest.mark.parametrize(
    ("flags", "setting", "alternative"),
    [
        (["--read-token", READ, "--admin-token", ADMIN], "read_token", "--read-token-file"),
        (["--admin-token", ADMIN], "admin_token", "EDGELOOP_HUB_ADMIN_TOKEN"),
        (["--broker", f"mqtt://hub:{BROKER_PW}@h:1883"], "broker", "--broker-password-file"),
        (["--broker-password", BROKER_PW], "broker_password", "--broker-password-file"),
    ],
)
def test_a_secret_given_as_a_flag_is_refused_naming_the_alternatives(
    flags: list[str], setting: str, alternative: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _resolve(*flags)
    assert caught.value.setting == setting
    message = str(caught.value)
    assert "ps" in message and alternative in message
    _assert_hidden(message)


def test_a_token_file_others_may_read_is_refused_with_the_chmod(tmp_path: Path) -> None:
    flags = _files(tmp_path)
    (tmp_path / "admin").chmod(0o644)
    with pytest.raises(ConfigError, match=f"chmod 600 {tmp_path / 'admin'}") as caught:
        _resolve(*flags)
    _assert_hidden(str(caught.value))


def test_a_toml_file_with_a_secret_must_be_private(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    write_private(config, f'read_token = "{READ}"\nadmin_token = "{ADMIN}"\n')
    assert _resolve("--config", str(config)).admin_token == ADMIN
    config.chmod(0o640)
    with pytest.raises(ConfigError, match=f"chmod 600 {config}") as caught:
        _resolve("--config", str(config))
    _assert_hidden(str(caught.value))
    # A TOML file without secrets (token files named in it) may stay readable.
    files = _files(tmp_path)
    config.write_text(f'read_token_file = "{files[1]}"\nadmin_token_file = "{files[3]}"\n')
    config.chmod(0o644)
    assert _resolve("--config", str(config)).read_token == READ


def test_a_secret_given_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="given twice"):
        _resolve(*_files(tmp_path), env={"EDGELOOP_HUB_READ_TOKEN": READ})


def test_the_broker_password_needs_an_external_url_with_a_user_and_no_password(
    tmp_path: Path,
) -> None:
    env = {"EDGELOOP_HUB_BROKER_PASSWORD": BROKER_PW}
    for broker, why in (
        ("embedded", "external"),
        ("mqtt://broker.local:1883", "names no user"),
        ("mqtt://hub:other-pass@broker.local:1883", "has a password too"),
    ):
        with pytest.raises(ConfigError, match=why) as caught:
            _resolve(*_files(tmp_path), env={**env, "EDGELOOP_HUB_BROKER": broker})
        _assert_hidden(str(caught.value))


def test_an_error_about_a_token_points_at_its_file_option_never_its_flag(tmp_path: Path) -> None:
    read, admin = tmp_path / "read", tmp_path / "admin"
    write_private(read, "same-token-for-both-0123456789\n")
    write_private(admin, "same-token-for-both-0123456789\n")
    with pytest.raises(ConfigError) as caught:
        _resolve("--read-token-file", str(read), "--admin-token-file", str(admin))
    assert "(set --read-token-file or EDGELOOP_HUB_READ_TOKEN)" in str(caught.value)
    assert "same-token" not in str(caught.value)
