"""``edgeloop-agent``: the device owner's front door.

The entry point is the only place that configures logging, installs signal
handlers and builds settings; everything below receives them.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from edge_agent.actuators import Actuator, CommandActuator, LogActuator, MachineActuator
from edge_agent.malloc import limit_arenas
from edge_agent.scheduling import configure_threads
from edge_agent.settings import AgentSettings, load_settings
from edge_agent.sources.base import Source
from shared import __version__
from shared.errors import ConfigError, ManifestError
from shared.logformat import configure_logging, default_log_format

if TYPE_CHECKING:  # types only: each is loaded where it is used (sim: in build_source)
    from edge_agent.agent import Agent
    from edge_agent.engine import EdgeModel
    from edge_agent.metrics import MetricsServer
    from edge_agent.ota.runner import OtaConfig
    from shared.features import SensorSpec
    from simulators.machine import SimulatedMachine

__all__ = ["build_actuators", "build_source", "main"]

log = logging.getLogger("edge_agent")


def build_source(
    settings: AgentSettings, sensors: tuple[SensorSpec, ...]
) -> tuple[Source, SimulatedMachine | None]:
    """The configured source of the model's ``sensors``, and the simulated machine when there is one.

    A sensor the source cannot provide is a :class:`ConfigError` naming what the
    model reads and what the source has.

    Each source's module is imported only when it is chosen: the simulator
    (and :mod:`simulators`) loads only with ``--source sim``.
    """
    if settings.source == "sim":
        from edge_agent.sources.simulated import SimulatedSource  # noqa: PLC0415
        from simulators.drift import parse_drift  # noqa: PLC0415
        from simulators.machine import MachineConfig, SimulatedMachine  # noqa: PLC0415

        try:
            drifts = tuple(parse_drift(spec) for spec in settings.sim_drift)
            config = MachineConfig(seed=settings.sim_seed, rate_hz=settings.rate_hz, drifts=drifts)
            if settings.sim_urgent_rate is not None:
                config = dataclasses.replace(config, urgent_rate=settings.sim_urgent_rate)
            if settings.sim_fault_rate is not None:
                config = dataclasses.replace(config, fault_rate=settings.sim_fault_rate)
        except ValueError as exc:
            raise ConfigError(f"simulated machine: {exc}", setting="sim_drift") from None
        machine = SimulatedMachine(config)
        return SimulatedSource(
            machine,
            settings.rate_hz,
            restart_after_s=settings.sim_restart_s,
            sensors=[s.name for s in sensors],
        ), machine
    if settings.source == "csv":
        from edge_agent.sources.csv_replay import CsvReplaySource  # noqa: PLC0415

        assert settings.csv_path is not None
        source = CsvReplaySource(
            settings.csv_path,
            [s.name for s in sensors],
            settings.csv_ts_column,
            settings.csv_pace,
            settings.csv_delimiter,
            column_map=settings.csv_map,
            ts_unit=settings.csv_ts_unit,
        )
        return source, None
    if settings.source == "stdin":
        from edge_agent.sources.stdin_jsonl import StdinSource  # noqa: PLC0415

        # A byte that is not UTF-8 spoils its line (counted), not the whole stream.
        if isinstance(sys.stdin, io.TextIOWrapper):
            sys.stdin.reconfigure(errors="replace")
        return StdinSource(sys.stdin, [s.name for s in sensors]), None
    from edge_agent.sources.plugins import load_plugin  # noqa: PLC0415

    assert settings.plugin is not None
    return load_plugin(settings.plugin, settings, sensors), None


def build_actuators(settings: AgentSettings, machine: SimulatedMachine | None) -> list[Actuator]:
    """The configured actions; ``machine`` is the simulated one, for the ``machine`` action."""
    actuators: list[Actuator] = []
    for name in settings.actions:
        if name == "log":
            actuators.append(LogActuator())
        elif name == "command":
            assert settings.action_command is not None
            actuators.append(CommandActuator(settings.action_command))
        elif name == "machine":
            assert machine is not None  # settings refuse 'machine' without --source sim
            actuators.append(MachineActuator(machine))
    return actuators


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ConfigError as exc:
        print(f"edgeloop-agent: {exc}", file=sys.stderr)
        return 2
    running: list[Any] = []  # the agent once built; an update swaps its model

    def log_context() -> dict[str, str | None]:
        """Every line says which device it is of, and which model version runs."""
        return {
            "device": settings.device,
            "model_version": running[0].model.version if running else None,
        }

    configure_logging(
        settings.log_level, settings.log_format or default_log_format(), context=log_context
    )
    limit_arenas()  # before any thread starts: all share one malloc arena (edge_agent.malloc)
    try:
        # Before any thread starts: the threads started later stay on this CPU.
        cpu = configure_threads(settings.cpu)
    except ConfigError as exc:
        print(f"edgeloop-agent: {exc}", file=sys.stderr)
        return 2
    if cpu is not None:
        log.info(
            "device %r: the agent's threads run on CPU %d (--cpu %s)",
            settings.device,
            cpu,
            settings.cpu,
        )
    from edge_agent.agent import Agent  # noqa: PLC0415 - pulls in onnxruntime and paho
    from edge_agent.reading import load_baseline  # noqa: PLC0415

    try:
        model = _start_model(settings)
        baseline = None
        if settings.baseline is not None:
            baseline = load_baseline(settings.baseline, settings.device, model.manifest)
        source, machine = build_source(settings, model.manifest.input.sensors)
        actuators = build_actuators(settings, machine)
    except (ConfigError, ManifestError) as exc:
        print(f"edgeloop-agent: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "device %r: %s received, shutting down", settings.device, signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent = Agent(settings, model, source, actuators, baseline)
    running.append(agent)
    if settings.ota and agent.replay is None:
        # Not while replaying a recording: its messages are numbered by the recording,
        # and a model swapped mid-replay would score it differently from the last time.
        agent.enable_ota(ota_config(settings, model.manifest.input.sensor_names))
    metrics = None
    if settings.metrics_port is not None:
        try:
            metrics = _start_metrics(agent, settings.metrics_port)
        except (ConfigError, OSError) as exc:
            print(f"edgeloop-agent: {exc}", file=sys.stderr)
            return 2
    try:
        return agent.run(stop)
    finally:
        if metrics is not None:
            metrics.close()


def _start_metrics(agent: Agent, port: int) -> MetricsServer:
    """``--metrics-port``: the agent's figures on 127.0.0.1 (:mod:`edge_agent.metrics`)."""
    try:
        from edge_agent.metrics import start_metrics_server  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            "--metrics-port needs the prometheus-client package, which is not installed; "
            "install it (pip install 'edgeloop[edge]') or leave --metrics-port unset",
            setting="metrics_port",
        ) from None
    try:
        server = start_metrics_server(agent, port)
    except OSError as exc:
        raise OSError(
            f"the metrics endpoint cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
            "choose another --metrics-port, or leave it unset"
        ) from None
    log.info("metrics at %s (--metrics-port)", server.url)
    return server


def _start_model(settings: AgentSettings) -> EdgeModel:
    """The model to start on: the last one an update committed (STATE_DIR/ota/current.json),
    else the factory model (``--model``). A committed slot that no longer loads is logged
    and the factory model runs."""
    from edge_agent.engine import load_edge_model  # noqa: PLC0415
    from edge_agent.ota.slots import ModelSlots  # noqa: PLC0415

    slots = ModelSlots(settings.state_dir)
    current = slots.current()  # with --ota false too: the device's model is the committed one
    if current is not None:
        path = slots.slot(current.name, current.version)
        try:
            return load_edge_model(path, __version__)
        except ManifestError as exc:
            log.error(
                "device %r: the committed model %s %s does not load (%s); starting on the "
                "factory model %s",
                settings.device,
                current.name,
                current.version,
                exc,
                settings.model,
            )
    return load_edge_model(settings.model, __version__)


def ota_config(settings: AgentSettings, source_sensors: tuple[str, ...]) -> OtaConfig:
    """The OTA runner's configuration from the agent's settings."""
    import ssl  # noqa: PLC0415

    from edge_agent.ota.checks import TrialSettings  # noqa: PLC0415
    from edge_agent.ota.machine import OtaSettings  # noqa: PLC0415
    from edge_agent.ota.runner import OtaConfig  # noqa: PLC0415

    tls = None
    if settings.hub_url.startswith("https://"):
        ca = settings.broker_ca_file
        tls = ssl.create_default_context(cafile=None if ca is None else str(ca))
    broker = settings.broker
    credentials = None
    if broker.username is not None and broker.password is not None:
        credentials = (broker.username, broker.password)
    ota = OtaSettings(
        switch_wait_s=settings.ota_switch_wait_s,
        trial_readings=settings.ota_trial_readings,
        trial_s=settings.ota_trial_s,
        trial_deadline_s=max(600.0, 10 * settings.ota_trial_s),
        trial=TrialSettings(latency_factor=settings.ota_latency_factor),
        retry_after_s=settings.ota_retry_s,
    )
    return OtaConfig(
        settings.hub_url,
        settings.trusted,
        ota,
        settings.ota_max_bytes,
        __version__,
        source_sensors,
        credentials,
        tls,
        smoke_budget_us=settings.ota_smoke_budget_ms * 1000.0,
    )


if __name__ == "__main__":
    raise SystemExit(main())
