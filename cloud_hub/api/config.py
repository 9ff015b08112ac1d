"""The API's settings: tokens, staleness, page and batch sizes.

Built once by the hub's entry point (from :class:`cloud_hub.settings.HubSettings`)
and passed to :func:`cloud_hub.api.create_app`; nothing reads the environment
here. :class:`ApiConfig` checks itself at construction so an app can never be
built with an access rule that makes no sense.

Access levels and tokens:

- both tokens set: read routes take the read or the admin token, admin routes
  only the admin token;
- ``insecure_dev=True``: a level without a token is open to anyone (no tokens
  at all: every route is open, and the OpenAPI description says so). A level
  with a token still needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from shared.errors import ConfigError

__all__ = ["Access", "ApiConfig"]

Access = Literal["read", "admin"]
"""An access level; ``admin`` includes ``read``."""


def _check_token(name: str, token: str | None) -> None:
    if token is None:
        return
    if not token or token != token.strip() or any(c.isspace() for c in token):
        raise ConfigError(
            f"API {name} must be a non-empty secret without whitespace; generate one with "
            "python3 -c 'import secrets; print(secrets.token_hex(32))'"
        )
    if not token.isascii() or not token.isprintable():
        raise ConfigError(
            f"API {name} must be printable ASCII (it travels in an HTTP header); generate one "
            "with python3 -c 'import secrets; print(secrets.token_hex(32))'"
        )


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Settings of the HTTP API.

    >>> ApiConfig(read_token=None, admin_token=None, insecure_dev=True).open_access
    'admin'
    """

    # repr=False: a config printed in a log or a test failure must not show the tokens.
    read_token: str | None = field(repr=False)
    """Bearer token for read routes (the admin token is accepted there too)."""
    admin_token: str | None = field(repr=False)
    """Bearer token for every route, admin routes included."""
    insecure_dev: bool = False
    """Allow a level without a token to be open to anyone (development only)."""
    stale_after_s: float = 30.0
    """An online device silent for longer than this shows as ``stale``."""
    max_page: int = 5000
    """Largest ``limit`` a paginated route accepts."""
    predict_max_rows: int = 10_000
    """Most rows one ``POST /v1/predict`` may score."""
    predict_max_body_bytes: int | None = None
    """Largest ``POST /v1/predict`` body; ``None``: 4 KiB per allowed row plus 64 KiB."""
    predict_cache_models: int = 4
    """Models ``/v1/predict`` keeps loaded (least recently used go first)."""
    max_body_bytes: int = 65_536
    """Largest body of any request but ``POST /v1/predict`` and ``POST /v1/models``."""
    model_upload_max_bytes: int = 256 * 1024 * 1024
    """Largest ``POST /v1/models`` body (a zipped package), and most it may unpack to."""

    def __post_init__(self) -> None:
        _check_token("read_token", self.read_token)
        _check_token("admin_token", self.admin_token)
        if not self.insecure_dev and (self.read_token is None or self.admin_token is None):
            missing = [
                n
                for n, t in (("read_token", self.read_token), ("admin_token", self.admin_token))
                if t is None
            ]
            raise ConfigError(
                f"the API needs both a read and an admin token, {' and '.join(missing)} missing; "
                "give both, or set insecure_dev=True (--insecure-dev) for development only"
            )
        if self.read_token is not None and self.read_token == self.admin_token:
            raise ConfigError(
                "API read_token equals admin_token; they must differ, or read access is admin access"
            )
        if self.read_token is not None and self.admin_token is None:
            raise ConfigError(
                "API read_token is set but admin_token is not: admin routes would be open while "
                "reads need a token; set admin_token too"
            )
        if not self.stale_after_s > 0:
            raise ConfigError(f"API stale_after_s must be > 0 seconds, got {self.stale_after_s}")
        for name in ("max_page", "predict_max_rows", "predict_cache_models"):
            if getattr(self, name) < 1:
                raise ConfigError(f"API {name} must be >= 1, got {getattr(self, name)}")
        if self.model_upload_max_bytes < 1024:
            raise ConfigError(
                f"API model_upload_max_bytes must be >= 1024, got {self.model_upload_max_bytes}"
            )
        if self.max_body_bytes < 0:
            raise ConfigError(f"API max_body_bytes must be >= 0, got {self.max_body_bytes}")
        if self.predict_max_body_bytes is not None and self.predict_max_body_bytes < 1024:
            raise ConfigError(
                f"API predict_max_body_bytes must be >= 1024, got {self.predict_max_body_bytes}"
            )

    @property
    def open_access(self) -> Access | None:
        """The access level anyone has without a token: ``"admin"``, ``"read"`` or None."""
        if not self.insecure_dev:
            return None
        if self.admin_token is None:
            return "admin"
        if self.read_token is None:
            return "read"
        return None

    @property
    def predict_body_limit(self) -> int:
        """The effective body size limit of ``POST /v1/predict``, in bytes."""
        if self.predict_max_body_bytes is not None:
            return self.predict_max_body_bytes
        return self.predict_max_rows * 4096 + 65_536
