"""The hub's HTTP API (FastAPI on uvicorn): devices, telemetry, events, models, stats, predict.

Build it with :func:`create_app` from a store and an :class:`ApiConfig`;
serve it with uvicorn. Layout, by concern:

- ``app``: the factory (wiring only) and the lifespan;
- ``config``: :class:`ApiConfig`, the API's settings and access rules;
- ``auth``: bearer tokens, the ``ReadAccess`` / ``AdminAccess`` dependencies;
- ``deps``: the store, config and scorer-cache dependencies;
- ``params``: shared request parameters and their checks (page size, 404s);
- ``schemas``: request and public response models (the store's records are the stored ones);
- ``errors``: error bodies and handlers, every ``detail`` saying what to fix;
- ``routes/``: one module per resource;
- ``artifacts``, ``byteranges``, ``scorers``: model files on disk, HTTP Range, loaded models.

Routes run in the server's thread pool (plain ``def``); see :mod:`cloud_hub.api.app`.
"""

from cloud_hub.api.app import create_app
from cloud_hub.api.config import Access, ApiConfig

__all__ = ["Access", "ApiConfig", "create_app"]
