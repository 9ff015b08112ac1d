"""Dependencies routes take as ``Annotated`` parameters: the store, the config, the scorers.

:func:`cloud_hub.api.app.create_app` puts one :class:`ApiState` on
``app.state``; the lifespan opens the long-lived :class:`ScorerCache` and
hands it over through the lifespan state. Nothing here is global.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Depends, Request

from cloud_hub.api.config import ApiConfig
from cloud_hub.api.scorers import ScorerCache
from cloud_hub.health import PartHealth
from cloud_hub.ota.publisher import DesiredPublisher
from cloud_hub.store.base import Store
from shared.signing import TrustedKey

if TYPE_CHECKING:
    from cloud_hub.device_credentials import DeviceCredentials
    from cloud_hub.ota.rollouts import RolloutManager

__all__ = [
    "ApiState",
    "ConfigDep",
    "ScorersDep",
    "StateDep",
    "StoreDep",
    "get_config",
    "get_scorers",
    "get_state",
    "get_store",
]

STATE_KEY = "edgeloop"
"""Attribute of ``app.state`` holding the :class:`ApiState`."""
SCORERS_KEY = "scorers"
"""Key of the lifespan state holding the :class:`ScorerCache`."""


@dataclass(frozen=True, slots=True)
class ApiState:
    """What every request of one app shares."""

    store: Store
    config: ApiConfig
    ingest_stats: Callable[[], dict[str, Any]] | None
    models_root: Path | None
    version: str
    started_at: float
    parts: Callable[[], Mapping[str, PartHealth]] | None = None
    batch_jobs: Any = None
    """The hub's :class:`~cloud_hub.batch.jobs.BatchJobs`, or None (no batch routes)."""
    registry: RegistryFiles | None = None
    """Where uploaded packages go and the keys they are checked with (None: no uploads)."""
    desired: DesiredPublisher | None = None
    """Sends devices their desired model (None: a hub without a broker link)."""
    rollouts: RolloutManager | None = None
    """Runs staged rollouts (None: a hub without a broker link)."""
    pipeline: Any = None
    """The hub's :class:`~cloud_hub.retrain.runner.PipelineRunner` (None: no
    ``POST /v1/pipeline/runs``; the runs recorded are still listed)."""
    device_credentials: DeviceCredentials | None = None
    """Checks devices' HTTP Basic credentials on model downloads (None: devices cannot
    download; bearer tokens only)."""


@dataclass(frozen=True, slots=True)
class RegistryFiles:
    """The registry's directory and the public keys a signed upload must verify with."""

    root: Path
    trusted: tuple[TrustedKey, ...]


def get_state(request: Request) -> ApiState:
    return cast(ApiState, getattr(request.app.state, STATE_KEY))


StateDep = Annotated[ApiState, Depends(get_state)]


def get_store(state: StateDep) -> Store:
    return state.store


def get_config(state: StateDep) -> ApiConfig:
    return state.config


def get_scorers(request: Request) -> ScorerCache:
    scorers = getattr(request.state, SCORERS_KEY, None)
    if not isinstance(scorers, ScorerCache):
        # Only reachable when an ASGI server runs the app with its lifespan off.
        raise RuntimeError(
            "the API's scorer cache is missing: the app's lifespan did not run; "
            "serve it with lifespan events on (uvicorn's default, lifespan='auto' or 'on')"
        )
    return scorers


StoreDep = Annotated[Store, Depends(get_store)]
ConfigDep = Annotated[ApiConfig, Depends(get_config)]
ScorersDep = Annotated[ScorerCache, Depends(get_scorers)]
