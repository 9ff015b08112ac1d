"""Operators' settings: the metrics token and scrape addresses, ``--log-format`` on the
three programs, the JSON log format itself, and no secret on the command lines the
README shows."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shlex
from pathlib import Path

import pytest

from cloud_hub.cli import _parser as hub_parser
from cloud_hub.metrics import MetricsAccess
from cloud_hub.settings import OPTIONS as HUB_OPTIONS
from cloud_hub.settings import HubSettings, resolve_settings
from edge_agent.settings import OPTIONS as AGENT_OPTIONS
from edge_agent.settings import load_settings
from shared.errors import ConfigError
from shared.logformat import (
    LOG_FORMAT_ENV,
    ContextFilter,
    JsonFormatter,
    configure_logging,
    default_log_format,
    log_format_env_problem,
)
from shared.options import OptionTable
from shared.secret_file import write_private
from simulators.cli import _parser as sim_parser

pytestmark = pytest.mark.timeout(20)

READ = "read-Pw7-0123456789abcdef"
ADMIN = "admin-Pw7-0123456789abcdef"
METRICS = "metrics-Pw7-0123456789abcdef"
REPO = Path(__file__).resolve().parent.parent


def _resolve(tmp_path: Path, *flags: str) -> HubSettings:
    for name, secret in (("read", READ), ("admin", ADMIN), ("metrics", METRICS)):
        write_private(tmp_path / name, secret + "\n")
    argv = [f"--{n}-token-file={tmp_path / n}" for n in ("read", "admin", "metrics")]
    args = HUB_OPTIONS.add_to(argparse.ArgumentParser()).parse_args([*argv, *flags])
    return resolve_settings(args, env={}, serving=True)


def test_the_metrics_token_comes_from_a_file_and_is_never_shown(tmp_path: Path) -> None:
    s = _resolve(tmp_path, "--metrics-allow", "127.0.0.1, 10.0.0.0/24")
    assert s.metrics_token == METRICS
    assert s.metrics_allow == ("127.0.0.1/32", "10.0.0.0/24")
    for text in (repr(s), str(s), repr(MetricsAccess(s.metrics_token, s.metrics_allow))):
        assert all(secret not in text for secret in (READ, ADMIN, METRICS)), text
    access = MetricsAccess(s.metrics_token, s.metrics_allow)
    assert access.allows_address("10.0.0.7") and access.allows_address("127.0.0.1")
    assert not access.allows_address("10.0.1.7") and not access.allows_address(None)
    assert access.is_token(METRICS) and not access.is_token(READ)


def test_a_metrics_token_flag_or_a_bad_scrape_address_is_refused_clearly(tmp_path: Path) -> None:
    args = HUB_OPTIONS.add_to(argparse.ArgumentParser()).parse_args(["--metrics-token", METRICS])
    with pytest.raises(ConfigError, match="--metrics-token-file") as flag:
        resolve_settings(args, env={}, serving=False)
    assert METRICS not in str(flag.value)
    with pytest.raises(ConfigError, match=r"metrics_allow.*'10\.0\.0\.300' is not an IP"):
        _resolve(tmp_path, "--metrics-allow", "127.0.0.1,10.0.0.300")
    write_private(tmp_path / "same", READ + "\n")
    with pytest.raises(ConfigError, match=r"metrics_token.*a token of its own"):
        _resolve(tmp_path, "--metrics-token-file", str(tmp_path / "same"))


def test_log_format_is_an_option_of_all_three_programs() -> None:
    assert hub_parser().parse_args(["--log-format", "json", "models", "list"]).log_format == "json"
    assert hub_parser().parse_args(["serve", "--log-format", "json"]).log_format == "json"
    assert hub_parser().parse_args(["--log-format", "json", "serve"]).log_format == "json"
    assert sim_parser().parse_args(["demo", "--log-format", "json"]).log_format == "json"
    assert sim_parser().parse_args(["--log-format", "json", "demo"]).log_format == "json"
    agent = load_settings(
        ["--model", "m", "--log-format", "json", "--metrics-port", "9101"], env={}
    )
    assert (agent.log_format, agent.metrics_port) == ("json", 9101)
    assert load_settings(["--model", "m"], env={}).metrics_port is None  # off by default
    with pytest.raises(ConfigError, match="log_format"):
        load_settings(["--model", "m", "--log-format", "xml"], env={})


def test_a_json_line_has_time_level_logger_message_and_the_device_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LOG_FORMAT_ENV, "text")  # configure_logging sets it; restored after
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers[:] = []  # as in a program's own process: no handler yet
    out = io.StringIO()
    configure_logging(
        logging.INFO, "json", stream=out, context=lambda: {"device": "pi-1", "model_version": None}
    )
    try:
        log = logging.getLogger("edgeloop.test")
        log.info("two\nlines %s", "here")
        log.warning("other", extra={"device": "pi-2", "model_version": "1.1.0"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "two\nlines here" and first["device"] == "pi-1"
    assert "model_version" not in first
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert (first["level"], first["logger"]) == ("INFO", "edgeloop.test")
    assert (second["device"], second["model_version"]) == ("pi-2", "1.1.0")
    assert "ValueError: boom" in third["exc"]
    assert isinstance(JsonFormatter(), logging.Formatter)
    assert ContextFilter(dict).filter(logging.makeLogRecord({})) is True


def test_a_log_format_variable_that_names_no_format_is_warned_about_not_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # EDGELOOP_LOG_FORMAT=xml used to fall back to text without a word.
    monkeypatch.setenv(LOG_FORMAT_ENV, "xml")
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers[:] = []
    out = io.StringIO()
    try:
        configure_logging(logging.INFO, default_log_format(), stream=out)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert "EDGELOOP_LOG_FORMAT='xml' is not a log format (text or json)" in out.getvalue()
    assert "logging as text; set it to text or json, or unset it" in out.getvalue()
    assert os.environ[LOG_FORMAT_ENV] == "text"  # the children get a valid one
    assert log_format_env_problem({LOG_FORMAT_ENV: " Json "}, "json") is None
    assert log_format_env_problem({}, "text") is None


def _readme_commands() -> list[list[str]]:
    """Every edgeloop-hub / edgeloop-agent / edgeloop-sim command line in the README's
    shell blocks (continuation lines joined)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands: list[list[str]] = []
    for block in re.findall(r"```(?:sh|bash|shell|console)?\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for raw in joined.splitlines():
            line = raw.strip().removeprefix("$ ")
            if not re.search(r"\bedgeloop-(hub|agent|sim)\b", line):
                continue
            try:
                commands.append(shlex.split(line, comments=True))
            except ValueError:
                continue  # a line of prose in a block, not a command
    return commands


def _secret_flags(table: OptionTable) -> set[str]:
    return {o.flag for o in table if o.secret}


def test_no_command_line_in_the_readme_puts_a_secret_on_argv() -> None:
    commands = _readme_commands()
    assert len(commands) >= 10
    secret_flags = _secret_flags(HUB_OPTIONS) | _secret_flags(AGENT_OPTIONS)
    assert {"--read-token", "--admin-token", "--metrics-token", "--broker-password"} <= secret_flags
    url_options = {o.flag: o for o in (*HUB_OPTIONS, *AGENT_OPTIONS) if o.redact is not None}
    for argv in commands:
        for i, word in enumerate(argv):
            flag, _, inline = word.partition("=")
            assert flag not in secret_flags, f"README runs {' '.join(argv)!r}: a secret flag"
            if flag in url_options:
                value = inline or (argv[i + 1] if i + 1 < len(argv) else "")
                assert not url_options[flag].holds_secret(value), f"{argv}: a password in a URL"
