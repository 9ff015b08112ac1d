"""Errors shared by every part of edgeloop.

Every error names the object, the rule it broke and, where there is one, the fix.
Wire errors carry a short ``reason`` slug: the hub and the agent count bad input
per reason, so the slug is part of the contract and never changes meaning.

    EdgeloopError
     ├── ContractError              something on the wire broke the contract
     │    ├── TopicError            a topic that is not in the grammar
     │    └── DecodeError           a payload that does not parse or validate
     │         └── FieldError       one field is missing, mistyped or out of range
     ├── ManifestError              a model package that cannot be trusted or run
     └── ConfigError                a setting that is missing or wrong
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ContractError",
    "DecodeError",
    "EdgeloopError",
    "FieldError",
    "ManifestError",
    "TopicError",
]


class EdgeloopError(Exception):
    """Base of every error edgeloop raises on purpose."""


class ContractError(EdgeloopError):
    """Something received over MQTT breaks the wire contract.

    ``reason`` is a stable slug used as a counter label (``not_json``,
    ``wrong_type``, ...).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TopicError(ContractError):
    """A topic (or a device id or root inside it) that is not in the grammar."""

    def __init__(self, message: str, *, topic: str, reason: str = "bad_topic") -> None:
        super().__init__(message, reason=reason)
        self.topic = topic


class DecodeError(ContractError):
    """A payload that is not valid JSON, too large, or not an object of the right kind."""


class FieldError(DecodeError):
    """One field of a message is missing, of the wrong type or out of range."""

    def __init__(self, message: str, *, field: str, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.field = field


class ManifestError(EdgeloopError):
    """A model package whose manifest, artifact or signature cannot be accepted."""

    def __init__(self, message: str, *, path: str = "", field: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.field = field


class ConfigError(EdgeloopError):
    """A setting that is missing, malformed or inconsistent with another."""

    def __init__(self, message: str, *, setting: str = "") -> None:
        super().__init__(message)
        self.setting = setting
