"""The app factory: :func:`create_app` wires the store, the config and the routes into a FastAPI app.

It wires only. No work happens at import time or in the factory beyond
building the app: the store is opened (and closed) by the caller, and the
lifespan opens the one long-lived thing the API owns, the cache of models
loaded for ``POST /v1/predict``, and drops it at shutdown.

Concurrency: routes are plain ``def`` functions, which FastAPI runs in the
server's thread pool; the store is used from those threads (one reader
connection per thread for SQLite) and the scorer cache is thread-safe.

>>> app = create_app(store, ApiConfig(read_token=r, admin_token=a))  # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8080)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from cloud_hub.api.bodylimit import BodyGate
from cloud_hub.api.config import ApiConfig
from cloud_hub.api.deps import SCORERS_KEY, STATE_KEY, ApiState, RegistryFiles
from cloud_hub.api.docs import install_docs
from cloud_hub.api.errors import install_handlers
from cloud_hub.api.routes import (
    batch,
    devices,
    events,
    health,
    labels,
    models,
    predict,
    stats,
    telemetry,
)
from cloud_hub.api.routes import drift as drift_routes
from cloud_hub.api.routes import pipeline as pipeline_routes
from cloud_hub.api.routes import rollouts as rollout_routes
from cloud_hub.api.scorers import ScorerCache
from cloud_hub.dashboard import install_dashboard
from cloud_hub.health import PartHealth
from cloud_hub.ota.publisher import DesiredPublisher

if TYPE_CHECKING:
    from cloud_hub.device_credentials import DeviceCredentials
    from cloud_hub.ota.rollouts import RolloutManager
from cloud_hub.store.base import Store

__all__ = ["ApiConfig", "create_app"]

log = logging.getLogger(__name__)

TITLE = "edgeloop hub API"


def _version() -> str:
    try:
        return metadata.version("edgeloop")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _description(config: ApiConfig) -> str:
    access = {
        None: "Every route but `/healthz` needs a bearer token: "
        "`Authorization: Bearer <token>`. The **read token** reads everything and may "
        "call `POST /v1/predict` (it writes nothing); the **admin token** is needed for "
        "admin routes (`/v1/dead-letters`, `/v1/batch/jobs`) and works everywhere.",
        "read": "**This hub runs with --insecure-dev: read routes need no token.** "
        "Admin routes still need the admin token.",
        "admin": "**This hub runs with --insecure-dev and no tokens: every route is open "
        "to anyone who can reach it. Never expose it beyond a development machine.**",
    }[config.open_access]
    return (
        "The cloud hub of edgeloop: devices and their state, telemetry with edge and heavy "
        "model scores side by side, urgent events, registered models (manifest byte for byte, its "
        "signature, and artifact download with Range resume), ingest statistics, and online inference.\n\n"
        f"{access}\n\n"
        "Times in responses are Unix seconds; `since` and `until` also take ISO 8601 "
        "(`2024-05-01T12:00:00Z`; without an offset a time is UTC). Lists page with `limit` and `cursor`: pass back "
        "`next_cursor` until it is null. Every error is JSON with a `detail` that says what "
        "is wrong and how to fix it."
    )


def create_app(
    store: Store,
    config: ApiConfig,
    *,
    ingest_stats: Callable[[], dict[str, Any]] | None = None,
    models_root: Path | None = None,
    parts: Callable[[], Mapping[str, PartHealth]] | None = None,
    batch_jobs: Any = None,
    registry: RegistryFiles | None = None,
    desired: DesiredPublisher | None = None,
    device_credentials: DeviceCredentials | None = None,
    rollouts: RolloutManager | None = None,
    pipeline: Any = None,
    metrics: Any = None,
    metrics_access: Any = None,
) -> FastAPI:
    """The hub's HTTP API on ``store``.

    ``ingest_stats`` returns the running ingest worker's live figures for
    ``GET /v1/stats/ingest`` (omit it when ingest runs elsewhere);
    ``models_root`` is where model paths registered as relative paths live;
    ``parts`` returns the health of the hub's parts (broker link, embedded
    broker) for ``GET /healthz``, which answers 503 while one is down;
    ``batch_jobs`` (a started :class:`~cloud_hub.batch.jobs.BatchJobs`) runs
    ``/v1/batch/jobs`` (without it those routes answer 503); ``registry`` lets
    ``POST /v1/models`` register uploaded packages (without it: 503);
    ``desired`` sends devices their desired model (``PUT /v1/devices/NAME/desired``;
    without it: 503); ``device_credentials`` lets devices download their desired
    model with their own credential (without it: tokens only); ``rollouts`` runs
    ``/v1/rollouts`` (without it: 503 for writes); ``pipeline`` (a started
    :class:`~cloud_hub.retrain.runner.PipelineRunner`) starts retraining runs
    (``POST /v1/pipeline/runs``; without it: 503); ``metrics`` (a
    :class:`~cloud_hub.metrics.HubMetrics`) serves ``GET /metrics`` to the tokens and
    addresses of ``metrics_access`` (a :class:`~cloud_hub.metrics.MetricsAccess`; without
    ``metrics``: no ``/metrics``).
    The caller owns ``store`` and closes it after the server stops.
    """
    version = _version()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        scorers = ScorerCache(config.predict_cache_models, models_root)
        if config.open_access == "admin":
            log.warning("API: insecure-dev mode with no tokens, every route is open to anyone")
        elif config.open_access == "read":
            log.warning("API: insecure-dev mode, read routes are open to anyone")
        try:
            yield {SCORERS_KEY: scorers}
        finally:
            scorers.clear()

    app = FastAPI(
        title=TITLE,
        version=version,
        description=_description(config),
        lifespan=lifespan,
        # Swagger UI from the package (install_docs), not from a CDN; no ReDoc.
        docs_url=None,
        redoc_url=None,
        openapi_tags=[
            {
                "name": "health",
                "description": "Liveness: the store, the broker link, the embedded broker; no token.",
            },
            {"name": "devices", "description": "The fleet and each device's state."},
            {"name": "telemetry", "description": "Readings with edge and heavy scores."},
            {"name": "events", "description": "Urgent events and the local action taken."},
            {
                "name": "models",
                "description": "Registered models: manifests, signatures and artifacts.",
            },
            {"name": "stats", "description": "Ingest statistics; dead letters (admin)."},
            {"name": "predict", "description": "Online inference with a registered model."},
            {"name": "batch", "description": "Batch scoring jobs over stored telemetry (admin)."},
            {
                "name": "rollouts",
                "description": "Staged rollouts of an edge model: cohorts, gates, rollback.",
            },
            {"name": "labels", "description": "Ground-truth labels for stored readings."},
            {
                "name": "pipeline",
                "description": "Retraining runs: steps, gates, metrics and decisions.",
            },
        ],
    )
    setattr(
        app.state,
        STATE_KEY,
        ApiState(
            store=store,
            config=config,
            ingest_stats=ingest_stats,
            models_root=models_root,
            version=version,
            started_at=time.time(),
            parts=parts,
            batch_jobs=batch_jobs,
            registry=registry,
            desired=desired,
            device_credentials=device_credentials,
            rollouts=rollouts,
            pipeline=pipeline,
        ),
    )
    install_handlers(app)
    install_docs(app)
    app.include_router(health.router)
    app.include_router(devices.router)
    app.include_router(telemetry.router)
    app.include_router(events.router)
    app.include_router(models.router)
    app.include_router(stats.router)
    app.include_router(predict.router)
    app.include_router(batch.router)
    app.include_router(rollout_routes.router)
    app.include_router(labels.router)
    app.include_router(pipeline_routes.router)
    app.include_router(drift_routes.router)
    install_dashboard(app)
    # Outermost of the app's own layers: tokens and sizes are checked before any body is read.
    app.add_middleware(BodyGate, config=config)
    if metrics is not None:
        from cloud_hub.api.routes import metrics as metrics_route  # noqa: PLC0415
        from cloud_hub.metrics import MetricsAccess  # noqa: PLC0415

        metrics_route.install(app, config, metrics, metrics_access or MetricsAccess())
    return app
