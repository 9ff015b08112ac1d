"""Wires a hub together: broker, store, models, ingest, HTTP API. Wiring only.

Concurrency model of the hub process (each part's own docstring has details):

- the main thread runs uvicorn (asyncio) for the HTTP API, which reads the
  store from its thread pool;
- paho's network thread only puts incoming messages on a bounded queue;
- one ingest worker thread drains that queue in batches, scores them with the
  heavy model, writes the store (its single writer) and publishes acks;
- one maintenance thread prunes old telemetry now and then;
- one batch thread runs batch jobs (``/v1/batch/jobs``), one at a time
  (:mod:`cloud_hub.batch.jobs`); at start it marks failed the jobs an earlier
  hub left unfinished;
- the retraining pipeline (:mod:`cloud_hub.retrain`): one watcher thread per run
  in progress (at most one per model), each run's work in a process of its own,
  and a schedule thread when ``--pipeline-schedule-s`` is set; at start it marks
  failed the runs an earlier hub left running;
- one commissioning thread records each new device's baseline once its first
  ``--baseline-readings`` readings are stored (:mod:`cloud_hub.commissioning`);
- the embedded broker (amqtt) runs in its own process, watched by one supervisor
  thread that restarts it when it dies (:mod:`cloud_hub.broker.supervisor`).

``/healthz`` reports the parts that can fail while the hub runs: its broker
link (:meth:`HubLink.health`) and, when embedded, the broker's process.

Start-up failures (port in use, broker unreachable, bad credentials, bad
store URL) become one :class:`HubStartError` line; ``serve`` prints it and
exits non-zero. The API's port is bound first, before the broker or anything
else starts, so a busy port stops the hub with nothing to clean up and the URL
it announces is one it holds (the real port when ``--http-port 0``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cloud_hub.health import PartHealth
from cloud_hub.settings import HubSettings
from shared import __version__
from shared.endpoint import BrokerEndpoint
from shared.errors import EdgeloopError
from shared.secret_file import read_secret_file, write_private
from shared.topics import Topics

if TYPE_CHECKING:
    from cloud_hub.drift.monitor import DriftSettings
    from cloud_hub.drift.states import FleetAlarm
    from cloud_hub.inference import OnnxScorer

__all__ = ["Hub", "HubStartError", "listen", "serve"]

log = logging.getLogger(__name__)
HUB_USER = "hub"
PRUNE_EVERY_S = 3600.0
_LISTEN_BACKLOG = 2048


class HubStartError(EdgeloopError):
    """The hub cannot start; the message names the problem and the fix."""


def drift_settings(s: HubSettings) -> DriftSettings:
    """The drift monitor's settings from the hub's ``--drift-*`` and ``--fleet-drift-*``."""
    from cloud_hub.drift.monitor import DriftSettings  # noqa: PLC0415
    from cloud_hub.drift.states import DriftRules, FleetRules  # noqa: PLC0415
    from shared.drift.detector import DetectorSettings  # noqa: PLC0415

    return DriftSettings(
        window_readings=s.drift_window_readings,
        detector=DetectorSettings(
            arl0=s.drift_arl0,
            fit_readings=s.drift_fit_readings,
            scale_readings=s.drift_scale_readings,
            threshold=s.drift_threshold,
        ),
        rules=DriftRules(s.drift_min_readings, s.drift_recovery_readings),
        fleet=FleetRules(s.fleet_drift_share, s.fleet_drift_window_s, s.fleet_drift_min_devices),
    )


def _hub_secret(data_dir: Path) -> str:
    """The hub's own broker secret for the embedded broker, made once and kept (0600)."""
    path = data_dir / "hub-broker-secret"
    if path.exists():
        # Refused, with the chmod to run, if others may read it.
        return read_secret_file(path, what="the hub's broker secret")
    secret = secrets.token_urlsafe(32)
    write_private(path, secret + "\n")
    return secret


class Hub:
    """A running hub's parts. ``start`` brings them up in order; ``stop`` takes them down."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.topics = Topics(settings.root)
        self.broker: Any = None
        self.supervisor: Any = None
        self.endpoint: BrokerEndpoint | None = None
        self.store: Any = None
        self.link: Any = None
        self.worker: Any = None
        self.app: Any = None
        self.batch_jobs: Any = None
        self.pipeline: Any = None
        """The :class:`~cloud_hub.retrain.runner.PipelineRunner`; the drift side calls
        its ``request_run(model, trigger="drift", reason=...)`` on a fleet alarm."""
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None
        self._rollout_thread: threading.Thread | None = None
        self.rollouts: Any = None
        self.drift: Any = None
        self._drift_runs: dict[str, threading.Timer] = {}
        self._drift_runs_lock = threading.Lock()
        """The :class:`~cloud_hub.ota.rollouts.RolloutManager` (set once ingest starts)."""
        self.commissioner: Any = None
        self.desired: Any = None
        """The :class:`~cloud_hub.ota.publisher.DesiredPublisher` (set once ingest starts)."""
        self.edge_model: str | None = None
        """Name of the hub's own edge model (the default build's)."""
        self.metrics: Any = None
        """The :class:`~cloud_hub.metrics.HubMetrics` behind ``GET /metrics`` (set at start)."""

    # -- start-up, in dependency order -------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        from cloud_hub.metrics import HubMetrics  # noqa: PLC0415

        self.metrics = HubMetrics()
        self.endpoint = self._start_broker()
        self._supervise_broker()
        self._open_store()
        heavy_path = self._models()
        self._start_pipeline()  # before ingest: a fleet drift alarm may ask for a run
        self._start_ingest(heavy_path)
        self._start_batch_jobs()
        self._make_app()
        self._maintenance = threading.Thread(
            target=self._maintain, name="hub-maintenance", daemon=True
        )
        self._maintenance.start()
        self._rollout_thread = threading.Thread(
            target=self.rollouts.run, args=(self._stop,), name="hub-rollouts", daemon=True
        )
        self._rollout_thread.start()
        self._start_commissioning()

    def _start_commissioning(self) -> None:
        s = self.settings
        if not s.baseline_readings:
            log.info("commissioning: off (--baseline-readings 0)")
            return
        from cloud_hub.commissioning import Commissioner  # noqa: PLC0415

        self.commissioner = Commissioner(
            self.store, s.baseline_readings, s.baseline_check_s, prefer=self.edge_model
        )
        self.commissioner.start(self._stop)

    def _start_broker(self) -> BrokerEndpoint:
        s = self.settings
        if not s.embedded_broker:
            return s.external_broker()
        from cloud_hub.broker.auth import add_user, read_password_file  # noqa: PLC0415
        from cloud_hub.broker.embedded import (  # noqa: PLC0415
            BrokerStartError,
            EmbeddedBroker,
            TlsListener,
        )
        from cloud_hub.broker.rules import BrokerRules  # noqa: PLC0415

        secret = _hub_secret(s.data_dir)
        known = read_password_file(s.password_file) if s.password_file.exists() else {}
        if HUB_USER not in known:
            add_user(s.password_file, HUB_USER, secret)
        broker = EmbeddedBroker(
            s.broker_host,
            s.broker_port,
            password_file=s.password_file,
            log_path=s.data_dir / "broker.log",
            rules=BrokerRules(roots=(s.root,), hub_user=HUB_USER),
            # After a restart, devices wait until the hub has subscribed again.
            hold_devices_for=HUB_USER,
            tls=TlsListener(s.mqtt_tls_port, *s.tls_files) if s.mqtt_tls_port else None,
        )
        try:
            broker.start()
        except BrokerStartError as exc:
            first = str(exc).strip().splitlines()[0]
            raise HubStartError(
                f"the embedded broker could not start on {s.broker_host}:{s.broker_port}: {first}; "
                "free the port or choose another with --broker-port"
            ) from None
        self.broker = broker
        log.info("embedded broker listening on %s (accounts in %s)", broker.url, s.password_file)
        if s.mqtt_tls_port:
            log.info("and with TLS on port %d (certificate %s)", s.mqtt_tls_port, s.tls_files[0])
        return broker.endpoint(HUB_USER, secret)

    def _supervise_broker(self) -> None:
        if self.broker is None:
            return
        from cloud_hub.broker.supervisor import BrokerSupervisor  # noqa: PLC0415

        self.supervisor = BrokerSupervisor(self.broker)
        self.supervisor.start()

    def parts(self) -> dict[str, PartHealth]:
        """The health of the parts that can fail while the hub runs, for ``/healthz``."""
        parts: dict[str, PartHealth] = {}
        if self.link is not None:
            parts["broker_link"] = self.link.health()
        if self.supervisor is not None:
            parts["embedded_broker"] = self.supervisor.health()
        return parts

    def _open_store(self) -> None:
        from cloud_hub.store import StoreError, open_store  # noqa: PLC0415

        try:
            self.store = open_store(self.settings.store)
        except (ValueError, OSError, StoreError) as exc:
            raise HubStartError(f"cannot open the store {self.settings.store!r}: {exc}") from None

    def _models(self) -> Path:
        """Build (or find) the default models, register them, return the heavy package
        (the registry's copy)."""
        from cloud_hub.keys import sign_packages  # noqa: PLC0415
        from cloud_hub.pipeline.build import build_default_models  # noqa: PLC0415
        from cloud_hub.registry.register import register_built  # noqa: PLC0415

        s = self.settings
        built = build_default_models(s.models_dir)
        for line in sign_packages(s.signing_key, s.data_dir, [built.edge, built.heavy]):
            log.info("%s", line)
        edge, heavy = register_built(
            self.store,
            s.data_dir,
            s.signing_key,
            [built.edge, built.heavy],
            by="hub:default-build",
            production_if_none=True,
        )
        self.edge_model = edge.record.name
        for done in (edge, heavy):
            log.info("%s", done.describe())
        log.info(
            "models ready: %s, %s%s", built.edge, built.heavy, " (reused)" if built.reused else ""
        )
        return Path(heavy.record.path)

    def _start_ingest(self, heavy_path: Path) -> None:
        from cloud_hub.devices.budgets import ManifestBudgets  # noqa: PLC0415
        from cloud_hub.devices.states import StateRules  # noqa: PLC0415
        from cloud_hub.devices.tracker import StateTracker  # noqa: PLC0415
        from cloud_hub.inference import OnnxScorer  # noqa: PLC0415
        from cloud_hub.ingest import HubLink, IngestConfig, IngestWorker  # noqa: PLC0415
        from cloud_hub.ingest.heavy import HeavyModels  # noqa: PLC0415
        from shared.manifest import load_package  # noqa: PLC0415
        from shared.messages import Limits  # noqa: PLC0415

        s = self.settings
        assert self.endpoint is not None
        heavy = load_package(heavy_path)
        config = IngestConfig(
            batch_max_messages=s.ingest_batch_max,
            batch_max_wait_ms=s.ingest_batch_wait_ms,
            dead_letter_keep=s.dead_letter_keep,
            limits=Limits(max_payload_bytes=s.max_payload_bytes),
            max_future_s=s.max_future_s,
        )
        self.link = HubLink(
            self.endpoint,
            self.topics,
            queue_max=s.ingest_queue_max,
            queue_max_bytes=s.ingest_queue_max_bytes,
            max_payload_bytes=s.max_payload_bytes,
            ca_file=s.broker_ca_file,
        )
        from cloud_hub.ota.publisher import DesiredPublisher  # noqa: PLC0415

        self.desired = DesiredPublisher(
            self.store,
            self.link.publish,
            self.topics,
            resend_interval_s=s.desired_resend_s,
        )
        default = OnnxScorer.from_package(heavy)
        edge_name = heavy.manifest.name.removesuffix("-heavy") + "-edge"
        from cloud_hub.drift.background import MonitorThread  # noqa: PLC0415
        from cloud_hub.drift.monitor import DriftMonitor  # noqa: PLC0415

        monitor = DriftMonitor(self.store, drift_settings(s), on_fleet_alarm=self._fleet_alarm)
        monitor.restore()
        # On its own thread: the worker acks the next batch without waiting for it.
        self.drift = MonitorThread(monitor)
        self.drift.start()
        rules = StateRules(
            stale_after_s=s.stale_after_s,
            buffering_outbox_messages=s.buffering_outbox_messages,
            latency_budget_ms=s.latency_budget_ms,
            degraded_clear_heartbeats=s.degraded_clear_heartbeats,
        )
        self.worker = IngestWorker(
            self.store,
            self.link,
            default,
            heavy.manifest.version,
            self.topics,
            config=config,
            heavy_models=HeavyModels(
                default,
                heavy.manifest.version,
                default_edge=edge_name,
                lookup=self._heavy_lookup,
            ),
            on_model_report=self.desired.on_report,
            observer=self.drift,
            states=StateTracker(
                self.store,
                rules,
                # A device's budget: its model version's manifest, else the setting.
                ManifestBudgets(self.store, rules),
            ),
            on_batch=self.metrics.observe_batch if self.metrics is not None else None,
        )
        self.worker.start()
        try:
            self.link.start()
        except (OSError, EdgeloopError, RuntimeError) as exc:
            raise HubStartError(str(exc)) from None
        from cloud_hub.ota.rollouts import RolloutManager  # noqa: PLC0415

        self.rollouts = RolloutManager(self.store, self.desired, interval_s=s.rollout_tick_s)
        # A broker restarted since may have lost its retained messages: send them all.
        sent = self.desired.send_all()
        if sent:
            log.info("desired state sent to %d device(s)", sent)

    def _fleet_alarm(self, alarm: FleetAlarm) -> None:
        """A fleet drift alarm (on the drift monitor's thread; the monitor counted it and
        stores its event right after, keeping it for another try if the store refuses):
        a pipeline run of the drifting model ``--pipeline-drift-wait-s`` later, when
        ``--pipeline-on-drift`` allows it; one waiting run per model at most."""
        reason = (
            f"fleet drift alarm on {alarm.model} {alarm.version}: {len(alarm.devices)} of "
            f"{alarm.active_devices} devices drift on {', '.join(alarm.streams)}"
        )
        if not self.settings.pipeline_on_drift:
            log.warning("%s; no pipeline run (--pipeline-on-drift is off)", reason)
            return
        with self._drift_runs_lock:
            waiting = self._drift_runs.get(alarm.model)
            if waiting is not None and waiting.is_alive():
                log.warning("%s; a pipeline run of %s is already waiting", reason, alarm.model)
                return

            def start() -> None:
                with self._drift_runs_lock:
                    self._drift_runs.pop(alarm.model, None)
                pipeline = self.pipeline
                if self._stop.is_set() or pipeline is None:
                    log.warning("no pipeline run after the %s: the hub is stopping", reason)
                    return
                request = pipeline.request_run(alarm.model, "drift", reason)
                log.warning("pipeline after the %s: %s", reason, request.why)

            wait = self.settings.pipeline_drift_wait_s
            log.warning(
                "%s; a pipeline run starts in %.0f s (--pipeline-drift-wait-s)", reason, wait
            )
            # Not kept across a hub restart: the monitor takes the open alarm back and
            # does not raise it again, so a run that was waiting is not started.
            timer = threading.Timer(wait, start)
            timer.name, timer.daemon = f"hub-drift-run-{alarm.model}", True
            self._drift_runs[alarm.model] = timer
            timer.start()

    def _start_batch_jobs(self) -> None:
        from cloud_hub.batch.jobs import BatchJobs  # noqa: PLC0415

        s = self.settings
        self.batch_jobs = BatchJobs(self.store, s.data_dir / "batch", s.models_dir.resolve())
        self.batch_jobs.start()

    def _start_pipeline(self) -> None:
        from cloud_hub.retrain.runner import PipelineRunner, runner_settings  # noqa: PLC0415

        self.pipeline = PipelineRunner(self.store, runner_settings(self.settings, self.edge_model))
        for run_id in self.pipeline.start():
            log.warning("pipeline run %s: marked failed, the hub restarted under it", run_id)

    def _heavy_lookup(self, name: str, version: str) -> tuple[OnnxScorer, str] | None:
        """The registered heavy model ``name`` for an edge model of ``version``: its
        partner of the same version if registered (whatever its stage: a pipeline run
        registers the pair together), else the production version, else the newest
        registered; a heavy candidate never scores another version's telemetry."""
        from cloud_hub.inference import OnnxScorer  # noqa: PLC0415
        from cloud_hub.registry.stages import Stage  # noqa: PLC0415
        from shared.manifest import load_package, parse_version  # noqa: PLC0415

        assert self.store is not None
        found = [r for r in self.store.models() if r.name == name and r.variant == "heavy"]
        if not found:
            return None
        same = [r for r in found if r.version == version]
        production = [r for r in found if r.stage is Stage.PRODUCTION]
        settled = [r for r in found if r.stage not in (Stage.CANDIDATE, Stage.ARCHIVED)]
        pool = production or settled or found
        record = same[0] if same else max(pool, key=lambda r: parse_version(r.version))
        package = load_package(Path(record.path))
        return OnnxScorer.from_package(package), record.version

    def _make_app(self) -> None:
        from cloud_hub.api import ApiConfig, create_app  # noqa: PLC0415
        from cloud_hub.api.deps import RegistryFiles  # noqa: PLC0415
        from cloud_hub.device_credentials import DeviceCredentials  # noqa: PLC0415
        from cloud_hub.keys import trusted_keys  # noqa: PLC0415
        from cloud_hub.registry.register import registry_root  # noqa: PLC0415

        s = self.settings
        config = ApiConfig(
            read_token=s.read_token,
            admin_token=s.admin_token,
            insecure_dev=s.insecure_dev,
            stale_after_s=s.stale_after_s,
            predict_max_body_bytes=s.predict_max_body_bytes,
            max_body_bytes=s.http_max_body_bytes,
            model_upload_max_bytes=s.model_upload_max_bytes,
        )
        worker = self.worker
        from cloud_hub.metrics import HubSources, MetricsAccess  # noqa: PLC0415

        self.metrics.read_from(
            HubSources(self.store, s.stale_after_s, worker, self.link, version=__version__)
        )
        self.app = create_app(
            self.store,
            config,
            ingest_stats=lambda: dataclasses.asdict(worker.stats()),
            models_root=s.models_dir.resolve(),
            parts=self.parts,
            batch_jobs=self.batch_jobs,
            # Uploads are checked with the hub's public keys; the API never signs.
            registry=RegistryFiles(registry_root(s.data_dir), tuple(trusted_keys(s.data_dir))),
            desired=self.desired,
            rollouts=self.rollouts,
            pipeline=self.pipeline,
            device_credentials=DeviceCredentials(
                s.device_credentials_file, not_devices=frozenset({HUB_USER})
            ),
            metrics=self.metrics,
            metrics_access=MetricsAccess(s.metrics_token, s.metrics_allow),
        )

    # -- running -----------------------------------------------------------------------------

    def _maintain(self) -> None:
        days = self.settings.retention_days
        while days and not self._stop.wait(PRUNE_EVERY_S):
            try:
                pruned = self.store.prune_telemetry(time.time() - days * 86400)
                log.info("retention: pruned %d readings received over %g days ago", pruned, days)
            except Exception:  # retention must never take the hub down
                log.exception("retention: pruning failed; will retry")

    def _stop_drift(self, monitor: Any) -> None:
        with self._drift_runs_lock:
            for timer in self._drift_runs.values():
                timer.cancel()
        monitor.stop(10.0)  # what ingest handed it last, counted; detectors saved

    def stop(self) -> None:
        """Drain ingest, then close the link, the store and the broker (each if started)."""
        self._stop.set()
        parts: list[tuple[str, Any, Callable[[Any], object]]] = [
            ("rollouts", self._rollout_thread, lambda thread: thread.join(10.0)),
            ("ingest", self.worker, lambda worker: worker.stop(10.0)),
            ("drift monitor", self.drift, self._stop_drift),
            ("batch jobs", self.batch_jobs, lambda jobs: jobs.stop(10.0)),
            ("pipeline", self.pipeline, lambda runner: runner.stop(10.0)),
            ("mqtt link", self.link, lambda link: link.close()),
            ("store", self.store, lambda store: store.close()),
            ("broker supervisor", self.supervisor, lambda supervisor: supervisor.stop()),
            ("broker", self.broker, lambda broker: broker.stop()),
        ]
        for name, part, action in parts:
            if part is None:
                continue
            try:
                action(part)
            except Exception:  # one part failing to stop must not leave the others running
                log.exception("stopping the %s failed", name)


def listen(host: str, port: int) -> socket.socket:
    """The API's listening socket on ``host:port``, or a :class:`HubStartError` naming
    the port and ``--http-port`` (or ``--http-host``)."""
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HubStartError(
            f"the HTTP API cannot listen on {where}: {host!r} does not resolve ({exc.strerror}); "
            "give an address of this machine with --http-host"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As uvicorn does: a port left in TIME_WAIT by a previous run is free to reuse.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = (
                f"port {port} is already in use on {host} (another hub, or another program); "
                "stop it, or choose another port with --http-port"
            )
        elif exc.errno == errno.EACCES:
            why = (
                f"port {port} needs privileges this process lacks; choose a port above 1023 "
                "with --http-port"
            )
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = f"{host} is not an address of this machine; check --http-host"
        else:
            why = f"{exc.strerror}; check --http-host and --http-port"
        raise HubStartError(f"the HTTP API cannot listen on {where}: {why}") from None
    return sock


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take the exclusive lock ``data_dir/hub.lock`` (holding this PID); it is held
    while the returned file is open. Raises :class:`HubStartError` naming the PID
    of the hub that holds it: two hubs on one store and one set of broker
    accounts would undo each other's writes."""
    import fcntl  # noqa: PLC0415

    path = data_dir / "hub.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fh = path.open("a+", encoding="ascii")
    except OSError as exc:
        raise HubStartError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        fh.seek(0)
        holder = fh.read(32).strip() or "?"
        fh.close()
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise HubStartError(f"cannot lock {path}: {exc.strerror or exc}") from None
        raise HubStartError(
            f"another hub (PID {holder}) is serving the data dir {data_dir} (it holds {path}); "
            "two hubs cannot share one store and one set of broker accounts. Stop that hub "
            "first, or give this one another --data-dir"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def serve(settings: HubSettings) -> int:
    """Run the hub until SIGTERM or Ctrl-C; returns the exit status.

    The hub holds the lock of its data dir (:func:`lock_data_dir`) while it runs."""
    try:
        lock = lock_data_dir(settings.data_dir)
    except HubStartError as exc:
        print(f"edgeloop-hub: {exc}", file=sys.stderr)
        return 2
    with lock:
        try:
            api_socket = listen(settings.http_host, settings.http_port)
        except HubStartError as exc:
            print(f"edgeloop-hub: {exc}", file=sys.stderr)
            return 2
        with api_socket:
            return _serve_on(settings, api_socket)


def _serve_on(settings: HubSettings, api_socket: socket.socket) -> int:
    import uvicorn  # noqa: PLC0415

    hub = Hub(settings)
    try:
        hub.start()
    except HubStartError as exc:
        hub.stop()
        print(f"edgeloop-hub: {exc}", file=sys.stderr)
        return 2
    except BaseException:
        hub.stop()
        raise
    host, port = api_socket.getsockname()[:2]
    url_host = f"[{settings.http_host}]" if ":" in settings.http_host else settings.http_host
    try:
        cert, key = settings.tls_files
        config = uvicorn.Config(
            hub.app,
            log_level="warning",
            # uvicorn's own records go through the root logger: --log-format holds for them.
            log_config=None,
            lifespan="on",
            ssl_certfile=str(cert) if settings.http_tls else None,
            ssl_keyfile=str(key) if settings.http_tls else None,
        )
        server = uvicorn.Server(config)

        # uvicorn handles SIGTERM/SIGINT while it runs, then raises the signal again
        # once it has shut down; with these handlers in place that second delivery
        # only asks a stopped server to stop, and the hub goes on to stop its parts
        # and exit 0. A signal that comes before uvicorn has taken over (just after
        # the line below) makes it stop as soon as it has started.
        def stop_server(*_: object) -> None:
            server.should_exit = True

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop_server)
        # The socket already listens: a client that connects after this line waits in
        # its backlog until uvicorn accepts, rather than being refused.
        print(
            f"edgeloop hub: API {'https' if settings.http_tls else 'http'}://{url_host}:{port} "
            "(docs at /docs), "
            f"broker {hub.endpoint.redacted_url if hub.endpoint else '?'}, store {settings.store}",
            flush=True,
        )
        # uvicorn raises SystemExit when the app's lifespan start-up fails.
        with contextlib.suppress(SystemExit):
            server.run(sockets=[api_socket])
        if not server.started:
            print(
                f"edgeloop-hub: the HTTP API on {host}:{port} did not start (the log above "
                "says why); fix that and start the hub again",
                file=sys.stderr,
            )
            return 2
    finally:
        hub.stop()
    return 0
