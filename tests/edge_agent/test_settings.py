"""Agent settings: defaults, precedence, and an error that says what to fix for every bad value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.settings import ENV_PREFIX, OPTIONS, AgentSettings, build_parser, load_settings
from shared.endpoint import BrokerEndpoint
from shared.errors import ConfigError
from shared.topics import DEFAULT_ROOT

pytestmark = pytest.mark.timeout(30)

OPT = {o.name: o for o in OPTIONS}
CONFIG_FLAG, CONFIG_ENV = "--config", ENV_PREFIX + "CONFIG"


def load(*argv: str, env: dict[str, str] | None = None, model: bool = True) -> AgentSettings:
    args = ["--model", "var/models/m"] if model else []
    return load_settings([*args, *argv], env={} if env is None else env)


def config_error(*argv: str, env: dict[str, str] | None = None, model: bool = True) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(*argv, env=env, model=model)
    return info.value


def assert_names(err: ConfigError, setting: str, flag: str, env: str) -> None:
    text = str(err)
    assert setting in text, text
    assert flag in text, text
    assert env in text, text


# -- defaults and precedence -------------------------------------------------------------------


def test_defaults() -> None:
    s = load()
    for opt in OPTIONS:
        if opt.name in ("device", "broker", "model", "csv_map", "hub_url") or opt.name.startswith(
            "broker_password"
        ):
            continue
        assert getattr(s, opt.name) == opt.default, opt.name
    assert s.model == Path("var/models/m")
    assert s.hub_url == "http://127.0.0.1:8080" and s.trusted == ()
    assert s.broker == BrokerEndpoint("127.0.0.1", 1883)
    assert s.root == DEFAULT_ROOT
    assert s.device  # the host name, made into a valid device id
    assert s.actions == ("log",)
    assert s.csv_map == {}  # parsed from its default, ''

    assert s.sources["model"] == "flag --model"
    assert {k for k, v in s.sources.items() if v != "default"} == {"model"}
    assert set(s.sources) == set(OPT)


def test_precedence_flag_over_env_over_toml_over_default(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('max_batch = 10\nheartbeat_s = 2.5\nmodel = "from/toml"\n', encoding="utf-8")
    env = {OPT["max_batch"].env: "20", OPT["heartbeat_s"].env: "7"}

    s = load("--config", str(cfg), "--max-batch", "30", env=env)
    assert s.max_batch == 30
    assert s.sources["max_batch"] == "flag --max-batch"
    assert s.heartbeat_s == 7.0
    assert s.sources["heartbeat_s"] == f"env {OPT['heartbeat_s'].env}"
    assert s.model == Path("var/models/m")  # the flag beats the file

    s = load("--config", str(cfg), env=env)
    assert s.max_batch == 20
    assert s.sources["max_batch"] == f"env {OPT['max_batch'].env}"

    s = load_settings(["--config", str(cfg)], env={})
    assert (s.max_batch, s.heartbeat_s, s.model) == (10, 2.5, Path("from/toml"))
    assert s.sources["max_batch"] == f"{cfg} key 'max_batch'"
    assert s.sources["inflight"] == "default"
    assert s.inflight == OPT["inflight"].default


def test_config_file_from_env_and_flag_wins(tmp_path: Path) -> None:
    by_env, by_flag = tmp_path / "env.toml", tmp_path / "flag.toml"
    by_env.write_text("max_batch = 11\n", encoding="utf-8")
    by_flag.write_text("max_batch = 12\n", encoding="utf-8")
    assert load(env={CONFIG_ENV: str(by_env)}).max_batch == 11
    assert load("--config", str(by_flag), env={CONFIG_ENV: str(by_env)}).max_batch == 12


def test_toml_lists_and_typed_values(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'actions = ["log", "command"]\naction_command = "logger urgent"\n'
        'sim_drift = ["mean_shift:temperature:500:1.0"]\nrate_hz = 50\n'
        'broker = "mqtt://dev:pw@broker.local:1884"\n',
        encoding="utf-8",
    )
    cfg.chmod(0o600)  # it holds a password
    s = load("--config", str(cfg))
    assert s.actions == ("log", "command")
    assert s.action_command == "logger urgent"
    assert s.sim_drift == ("mean_shift:temperature:500:1.0",)
    assert s.rate_hz == 50.0
    assert s.broker == BrokerEndpoint("broker.local", 1884, "dev", "pw")
    assert "pw" not in repr(s.broker)


def test_env_list_values() -> None:
    s = load(env={OPT["actions"].env: " log , machine "})
    assert s.actions == ("log", "machine")


# -- every invalid value: a ConfigError naming the setting, its flag and its env var -------------


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--max-batch", "many"], "max_batch"),  # bad int
        (["--max-batch=-1"], "max_batch"),  # negative
        (["--max-batch", "0"], "max_batch"),
        (["--sim-seed=-3"], "sim_seed"),
        (["--rate-hz", "0"], "rate_hz"),
        (["--rate-hz", "nan"], "rate_hz"),
        (["--rate-hz", "inf"], "rate_hz"),
        (["--sim-urgent-rate", "1.5"], "sim_urgent_rate"),
        (["--source", "serial"], "source"),  # bad choice
        (["--csv-pace", "slow"], "csv_pace"),
        (["--log-level", "TRACE"], "log_level"),
        (["--actions", "log,dance"], "actions"),  # unknown action
        (["--device", "bad/device"], "device"),
        (["--root", "a/#"], "root"),
        (["--broker", "http://broker.local"], "broker"),
        (["--broker", "mqtt://broker.local:99999"], "broker"),
        (["--source", "csv"], "csv_path"),
        (["--source", "plugin"], "plugin"),
        (["--actions", "command"], "action_command"),
        (["--actions", "command", "--action-command", "  "], "action_command"),
        (["--actions", "command", "--action-command", "echo 'unclosed"], "action_command"),
        (["--actions", "machine", "--source", "stdin"], "actions"),
        (["--reconnect-min-s", "10", "--reconnect-max-s", "5"], "reconnect_max_s"),
        (["--inflight", "50", "--mqtt-queue", "20"], "mqtt_queue"),
    ],
)
def test_invalid_flag(argv: list[str], setting: str) -> None:
    err = config_error(*argv)
    assert err.setting == setting
    assert_names(err, repr(setting), OPT[setting].flag, OPT[setting].env)


def test_invalid_value_from_env_names_flag_and_env() -> None:
    env_name = OPT["keepalive_s"].env
    err = config_error(env={env_name: "soon"})
    assert err.setting == "keepalive_s"
    assert_names(err, "'keepalive_s'", "--keepalive-s", env_name)
    assert "'soon'" in str(err)


def test_invalid_value_from_toml_names_file_flag_and_env(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("inbox_max = -5\n", encoding="utf-8")
    err = config_error("--config", str(cfg))
    assert err.setting == "inbox_max"
    assert_names(err, "'inbox_max'", "--inbox-max", OPT["inbox_max"].env)
    assert str(cfg) in str(err)


def test_missing_model() -> None:
    err = config_error(model=False)
    assert err.setting == "model"
    assert_names(err, "'model'", "--model", ENV_PREFIX + "MODEL")
    assert "required" in str(err)


def test_unknown_toml_key(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text("max_batch = 5\nmax_bacth = 5\n", encoding="utf-8")
    err = config_error("--config", str(cfg))
    assert err.setting == "max_bacth"
    assert_names(err, "'max_bacth'", CONFIG_FLAG, CONFIG_ENV)
    assert "max_batch" in str(err)  # the known keys are listed


@pytest.mark.parametrize(
    "content",
    [b"max_batch = \n", b"[unclosed\n", b"model = 'caf\xff'\n"],
    ids=["no-value", "bad-table", "not-utf8"],
)
def test_invalid_toml(tmp_path: Path, content: bytes) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_bytes(content)
    err = config_error("--config", str(cfg))
    assert err.setting == "config"
    assert_names(err, str(cfg), CONFIG_FLAG, CONFIG_ENV)
    assert "TOML" in str(err)


@pytest.mark.parametrize("kind", ["missing", "directory", "no-permission"])
def test_unreadable_config_file(tmp_path: Path, kind: str) -> None:
    cfg = tmp_path / "agent.toml"
    if kind == "directory":
        cfg.mkdir()
    elif kind == "no-permission":
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        cfg.write_text("max_batch = 5\n", encoding="utf-8")
        cfg.chmod(0)
    for where in (["--config", str(cfg)], []):
        env = {} if where else {CONFIG_ENV: str(cfg)}
        err = config_error(*where, env=env)
        assert err.setting == "config"
        assert_names(err, str(cfg), CONFIG_FLAG, CONFIG_ENV)
        assert "cannot read" in str(err)


# -- the broker password never shows ------------------------------------------------------------

_BROKEN_URLS = (
    "mqtt://dev:{pw}@broker.local:99999",
    "mqtt://dev:{pw}@broker.local/path",
    "mqtt://dev:{pw}@[::1",
    "mqtt://dev:{pw}@",
    "http://dev:{pw}@broker.local",
    "mqtt://:{pw}@broker.local",
    "dev:{pw}@broker.local:1883",  # no scheme at all
    "mqtt:/dev:{pw}@broker.local",
    "mqtt//dev:{pw}@broker.local",
)


@given(
    template=st.sampled_from(_BROKEN_URLS),
    password=st.text(
        alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&*+;=",
        min_size=1,
        max_size=20,
    ),
)
def test_broker_password_never_in_error(template: str, password: str) -> None:
    password = "Pw7" + password  # distinctive: cannot occur in the message by chance
    url = template.format(pw=password)
    for argv, env in (
        (["--broker", url], {}),
        ([], {OPT["broker"].env: url}),
    ):
        err = config_error(*argv, env=env)
        assert err.setting == "broker"
        assert password not in str(err)
        assert_names(err, "'broker'", "--broker", OPT["broker"].env)


def test_broker_password_not_in_settings_repr() -> None:
    s = load(env={OPT["broker"].env: "mqtt://dev:Pw7hidden@broker.local:1883"})
    assert s.broker.password == "Pw7hidden"
    assert "Pw7hidden" not in repr(s)


# -- help ---------------------------------------------------------------------------------------


def test_help_mentions_every_option() -> None:
    text = build_parser().format_help()
    squashed = "".join(text.split())  # argparse re-wraps the help text
    assert "--config" in text
    assert CONFIG_ENV in text
    for opt in OPTIONS:
        assert opt.flag in text, opt.name
        assert opt.env in squashed, opt.name
        assert opt.help.strip(), f"option {opt.name} has no help text"
        assert "".join(opt.help.split()) in squashed, opt.name


# -- the broker password comes from a file or the agent's own environment ----------------------


def test_broker_password_from_a_private_file(tmp_path: Path) -> None:
    from shared.secret_file import write_private  # noqa: PLC0415

    secret = tmp_path / "broker-password"
    write_private(secret, "Pw7-from-file\n")
    s = load(
        "--broker",
        "mqtt://pi-07@hub.local:1883",
        "--broker-password-file",
        str(secret),
    )
    assert s.broker == BrokerEndpoint("hub.local", 1883, "pi-07", "Pw7-from-file")
    assert "Pw7-from-file" not in repr(s)
    assert s.sources["broker_password"] == f"file {secret}"
    secret.chmod(0o644)
    err = config_error(
        "--broker", "mqtt://pi-07@hub.local:1883", "--broker-password-file", str(secret)
    )
    assert f"chmod 600 {secret}" in str(err) and "Pw7-from-file" not in str(err)


def test_broker_password_from_the_environment() -> None:
    env = {OPT["broker_password"].env: "Pw7-from-env"}
    s = load("--broker", "mqtt://pi-07@hub.local:1883", env=env)
    assert s.broker.password == "Pw7-from-env"
    assert "Pw7-from-env" not in repr(s)


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--broker", "mqtt://pi-07:Pw7-flag@hub.local:1883"], "broker"),
        (["--broker-password", "Pw7-flag"], "broker_password"),
    ],
)
def test_broker_password_as_a_flag_is_refused(argv: list[str], setting: str) -> None:
    err = config_error(*argv)
    assert err.setting == setting
    assert "Pw7-flag" not in str(err)
    assert "--broker-password-file" in str(err) and "ps" in str(err)


def test_a_toml_file_with_the_password_must_be_private(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('broker = "mqtt://pi-07:Pw7-toml@hub.local:1883"\n', encoding="utf-8")
    cfg.chmod(0o644)
    err = config_error("--config", str(cfg))
    assert f"chmod 600 {cfg}" in str(err) and "Pw7-toml" not in str(err)


def test_broker_password_twice_is_refused() -> None:
    env = {OPT["broker_password"].env: "Pw7-env", OPT["broker"].env: "mqtt://a:Pw7-url@h:1883"}
    err = config_error(env=env)
    assert err.setting == "broker_password" and "Pw7" not in str(err)


def test_ota_options_are_checked(tmp_path: Path) -> None:
    from shared.signing import SigningKey  # noqa: PLC0415

    pub = tmp_path / "signing.pub"
    pub.write_text(SigningKey.generate().public.pem())
    s = load("--trust", str(pub), "--hub-url", "https://hub.example:8443/", "--ota", "false")
    assert len(s.trusted) == 1 and s.hub_url == "https://hub.example:8443" and s.ota is False
    other = tmp_path / "other.pub"
    other.write_text(SigningKey.generate().public.pem())
    both = load("--trust", str(pub), "--trust", str(other))
    assert [k.source for k in both.trusted] == [str(pub), str(other)]
    assert load(env={"EDGELOOP_AGENT_TRUST": f"{pub},{other}"}).trusted == both.trusted
    assert "cannot be read" in str(config_error("--trust", str(tmp_path / "missing.pub")))
    (tmp_path / "junk.pub").write_text("not a key")
    assert_names(config_error("--trust", str(tmp_path / "junk.pub")), "trust", "--trust", "TRUST")
    # The natural mistakes: the keys directory, and the hub's private key.
    assert "signing.pub" in str(config_error("--trust", str(tmp_path)))
    private = tmp_path / "signing.key"
    private.write_bytes(SigningKey.generate().to_pem())
    err = str(config_error("--trust", str(private)))
    assert "private signing key" in err and "never copy" in err
    err = config_error("--hub-url", "ftp://hub")
    assert_names(err, "hub_url", "--hub-url", "EDGELOOP_AGENT_HUB_URL")
    assert "credentials" in str(config_error("--hub-url", "http://u:p@hub:8080"))
    assert_names(config_error("--ota", "maybe"), "ota", "--ota", "EDGELOOP_AGENT_OTA")
    assert_names(config_error("--ota-trial-readings", "0"), "ota_trial_readings", "--ota", "TRIAL")
