"""The contract both sides of edgeloop import: pure code, no I/O, no threads.

- :mod:`shared.topics` — the MQTT topic grammar;
- :mod:`shared.messages` — message types and their strict JSON codec;
- :mod:`shared.manifest` — the model package and its manifest;
- :mod:`shared.signing` — Ed25519 signatures over a manifest's exact bytes, key ids;
- :mod:`shared.package_verify` — a package's files and signature checked;
- :mod:`shared.reasons` — reason codes for a refused package;
- :mod:`shared.features` — sensors and the one feature function;
- :mod:`shared.baseline` — per-device baselines, mapped onto a model's reference;
- :mod:`shared.errors` — the exception tree;
- :mod:`shared.backoff` — reconnect delays, for the agent's and the hub's MQTT links;
- :mod:`shared.latency` — the latency window both sides report from;
- :mod:`shared.session_options` — how both inference engines run an ONNX model
  (as options to apply; onnxruntime itself is imported only by the engines).

It never imports ``edge_agent`` or ``cloud_hub``.
"""

from shared.errors import (
    ConfigError,
    ContractError,
    DecodeError,
    EdgeloopError,
    FieldError,
    ManifestError,
    TopicError,
)
from shared.features import FeatureWindow, SensorSpec
from shared.manifest import ModelManifest, ModelPackage, load_package
from shared.messages import (
    SCHEMA_VERSION,
    Ack,
    Desired,
    Event,
    Health,
    Limits,
    Message,
    Ota,
    Status,
    Telemetry,
    decode,
    encode,
)
from shared.topics import DEFAULT_ROOT, Kind, Topics, topic_matches

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ROOT",
    "SCHEMA_VERSION",
    "Ack",
    "ConfigError",
    "ContractError",
    "DecodeError",
    "Desired",
    "EdgeloopError",
    "Event",
    "FeatureWindow",
    "FieldError",
    "Health",
    "Kind",
    "Limits",
    "ManifestError",
    "Message",
    "ModelManifest",
    "ModelPackage",
    "Ota",
    "SensorSpec",
    "Status",
    "Telemetry",
    "TopicError",
    "Topics",
    "__version__",
    "decode",
    "encode",
    "load_package",
    "topic_matches",
]
