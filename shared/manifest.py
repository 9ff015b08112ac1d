"""The model package: ``model.onnx`` + ``manifest.json`` (+ ``manifest.sig``).

DESIGN.md section 4. A package is a directory. The manifest says what the model
is (name, version, variant), what it reads (the sensors, each with its unit,
valid range and fallback value; the window; the feature names derived from
them) and writes (classes, which one is urgent), when to act (urgent
thresholds), what its training data looked like (per sensor: location, scale
and range; reference histograms per feature and for the score, which the
hub's drift tracking counts against), how good it is (metrics), where it came from (lineage),
and how to check it still works (test vectors), how fast it must run on a
device (``latency_budget_ms``: the latency p99 per reading over which the hub
shows a device running it as degraded; optional, manifests written before it
have none and the hub's ``--latency-budget-ms`` stands in), and the sha256 and
size of every file in the package (``files``; manifests written before it have
none).
``manifest.sig`` is an Ed25519 signature of the manifest's exact bytes
(:mod:`shared.signing`); it is read here when present, and checked by
:func:`shared.package_verify.verify_package` (the hub's ``models verify``; the
agent does not verify it yet).

:func:`load_package` refuses anything it cannot trust: a manifest that does not
validate, a listed file (the model among them) whose size or sha256 differ from
the manifest's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from shared.errors import ManifestError
from shared.features import SensorSpec, feature_names

__all__ = [
    "DEFAULT_LATENCY_BUDGET_MS",
    "MANIFEST_FILE",
    "MAX_LATENCY_BUDGET_MS",
    "MAX_RULE_READINGS",
    "MODEL_FILE",
    "SIGNATURE_FILE",
    "Histogram",
    "InputSpec",
    "Lineage",
    "ModelFile",
    "ModelManifest",
    "ModelPackage",
    "OutputSpec",
    "PackageFile",
    "SensorReference",
    "TestVectors",
    "UrgentSpec",
    "load_package",
    "manifest_file_bytes",
    "parse_manifest",
    "parse_version",
    "sha256_file",
    "write_manifest",
]

MAX_RULE_READINGS: Final = 1000
"""The most readings the urgent rule's ``consecutive`` and ``release`` may count."""
MAX_LATENCY_BUDGET_MS: Final = 60_000.0
"""The largest ``latency_budget_ms`` a manifest may declare (a minute per reading)."""
DEFAULT_LATENCY_BUDGET_MS: Final = 20.0
"""The ``latency_budget_ms`` the default build and ``models train`` write: the hub's
``--latency-budget-ms`` default and the agent's OTA smoke budget (20 ms per reading)."""

MANIFEST_FILE: Final = "manifest.json"
MODEL_FILE: Final = "model.onnx"
SIGNATURE_FILE: Final = "manifest.sig"
FORMAT: Final = 2
_VERSION_RE = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)", re.ASCII)
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_SENSOR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.4.0"`` -> ``(1, 4, 0)``; versions compare as these tuples."""
    m = _VERSION_RE.fullmatch(version)
    if m is None:
        raise ValueError(f"version {version!r} is not of the form MAJOR.MINOR.PATCH, e.g. '1.4.0'")
    return (int(m[1]), int(m[2]), int(m[3]))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Obj:
    """Strict reader of one JSON object inside the manifest; errors name the path."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise ManifestError(
                f"manifest: {f'field {where!r}' if where else 'the top level'} must be an object",
                field=where,
            )
        self.obj: dict[str, Any] = obj
        self.where = where

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, types: type | tuple[type, ...], optional: bool = False) -> Any:
        if key not in self.obj or (optional and self.obj[key] is None):
            if optional:
                return None
            raise ManifestError(
                f"manifest: field {self._path(key)!r} is missing", field=self._path(key)
            )
        value = self.obj[key]
        if isinstance(value, bool) and bool not in (
            types if isinstance(types, tuple) else (types,)
        ):
            value = None  # bool is an int subclass; never accept it as a number
        if value is None or not isinstance(value, types):
            raise ManifestError(
                f"manifest: field {self._path(key)!r} has the wrong type ({type(self.obj[key]).__name__})",
                field=self._path(key),
            )
        return value

    def num(self, key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        try:
            value = float(self.get(key, (int, float)))
        except OverflowError:  # an int beyond float range
            value = math.inf
        if not (math.isfinite(value) and lo <= value <= hi):
            raise ManifestError(
                f"manifest: field {self._path(key)!r} = {value} must be finite and in [{lo}, {hi}]",
                field=self._path(key),
            )
        return value

    def sub(self, key: str) -> _Obj:
        return _Obj(self.get(key, dict), self._path(key))

    def fail(self, key: str, why: str) -> ManifestError:
        return ManifestError(f"manifest: field {self._path(key)!r} {why}", field=self._path(key))


def _floats(o: _Obj, key: str) -> tuple[float, ...]:
    values = o.get(key, list)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise o.fail(key, "must be a list of numbers")
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in out):
        raise o.fail(key, "must hold only finite numbers")
    return out


def _strings(o: _Obj, key: str) -> tuple[str, ...]:
    values = o.get(key, list)
    if not values or not all(isinstance(v, str) and v for v in values):
        raise o.fail(key, "must be a non-empty list of non-empty strings")
    if len(set(values)) != len(values):
        raise o.fail(key, "must not repeat a name")
    return tuple(values)


@dataclass(frozen=True, slots=True)
class PackageFile:
    """One file of the package as ``files`` lists it: a plain name, its sha256 and size."""

    path: str
    sha256: str
    size: int

    @classmethod
    def parse(cls, o: _Obj) -> PackageFile:
        name = o.get("path", str)
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise o.fail("path", f"= {name!r} must be a plain file name inside the package")
        if name in (MANIFEST_FILE, SIGNATURE_FILE):
            raise o.fail("path", f"= {name!r}: the manifest cannot list itself or its signature")
        sha = o.get("sha256", str)
        if not _SHA_RE.fullmatch(sha):
            raise o.fail("sha256", "must be 64 lowercase hex digits")
        return cls(name, sha, int(o.num("size", 0)))


def _files(o: _Obj, model: ModelFile) -> tuple[PackageFile, ...]:
    """The ``files`` list: optional (older manifests lack it); when present, it names
    each file once and holds the model file with the model's own sha256 and size."""
    if "files" not in o.obj:
        return ()
    raw = o.get("files", list)
    files = tuple(PackageFile.parse(_Obj(item, f"files[{i}]")) for i, item in enumerate(raw))
    names = [f.path for f in files]
    if len(set(names)) != len(names):
        raise o.fail("files", "must not list a file twice")
    entry = next((f for f in files if f.path == model.file), None)
    if entry is None or (entry.sha256, entry.size) != (model.sha256, model.size):
        raise o.fail(
            "files", f"must list {model.file!r} with the sha256 and size of the 'model' field"
        )
    return files


def _latency_budget(o: _Obj) -> float | None:
    """The optional ``latency_budget_ms``: absent (an older manifest) is None; present,
    a number in (0, :data:`MAX_LATENCY_BUDGET_MS`]."""
    if "latency_budget_ms" not in o.obj:
        return None
    value = o.obj["latency_budget_ms"]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and 0 < value <= MAX_LATENCY_BUDGET_MS):
        raise o.fail(
            "latency_budget_ms",
            f"= {value!r} must be a number of milliseconds in (0, {MAX_LATENCY_BUDGET_MS:g}] "
            "(the latency p99 per reading over which a device running the model is degraded); "
            "leave it out to use the hub's --latency-budget-ms",
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class ModelFile:
    """The ONNX artifact: file name, integrity, and graph input/output names."""

    file: str
    sha256: str
    size: int
    input_name: str
    scores_output: str
    quantization: Literal["int8-dynamic", "int8-static", "fp32"]

    @classmethod
    def parse(cls, o: _Obj) -> ModelFile:
        name = o.get("file", str)
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise o.fail("file", f"= {name!r} must be a plain file name inside the package")
        sha = o.get("sha256", str)
        if not _SHA_RE.fullmatch(sha):
            raise o.fail("sha256", "must be 64 lowercase hex digits")
        quant = o.get("quantization", str)
        if quant not in ("int8-dynamic", "int8-static", "fp32"):
            raise o.fail("quantization", f"= {quant!r} must be int8-dynamic, int8-static or fp32")
        return cls(
            name,
            sha,
            int(o.num("size", 1)),
            o.get("input_name", str),
            o.get("scores_output", str),
            quant,
        )


def _sensor(o: _Obj) -> SensorSpec:
    name = o.get("name", str)
    if not _SENSOR_RE.fullmatch(name):
        raise o.fail("name", f"= {name!r} must be 1-64 of letters, digits, _ . - (not first . -)")
    spec = SensorSpec(name, o.get("unit", str), o.num("min"), o.num("max"), o.num("fallback"))
    problem = spec.problem()
    if problem is not None:
        raise o.fail("min", problem)
    return spec


@dataclass(frozen=True, slots=True)
class InputSpec:
    """What the model reads: the sensors, and the float features of a window
    of their readings (:func:`shared.features.feature_names` of the sensors)."""

    sensors: tuple[SensorSpec, ...]
    window: int
    dtype: Literal["float32"] = "float32"

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sensors)

    @property
    def features(self) -> tuple[str, ...]:
        return feature_names(self.sensor_names)

    @property
    def fallback(self) -> tuple[float, ...]:
        return tuple(s.fallback for s in self.sensors)

    @classmethod
    def parse(cls, o: _Obj) -> InputSpec:
        if o.get("dtype", str) != "float32":
            raise o.fail("dtype", "must be 'float32'")
        raw = o.get("sensors", list)
        if not raw:
            raise o.fail("sensors", "must list at least one sensor")
        sensors = tuple(
            _sensor(_Obj(item, f"{o.where}.sensors[{i}]")) for i, item in enumerate(raw)
        )
        names = [s.name for s in sensors]
        if len(set(names)) != len(names):
            raise o.fail("sensors", "must not repeat a sensor name")
        spec = cls(sensors, int(o.num("window", 2, 10_000)))
        theirs, ours = _strings(o, "features"), spec.features
        if theirs != ours:
            at = next(
                (i for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b),
                min(len(theirs), len(ours)),
            )
            raise o.fail(
                "features",
                f"lists {len(theirs)} features where its {len(sensors)} sensors give {len(ours)} "
                f"(each of last, mean, std, delta for every sensor, in order); first difference "
                f"at position {at}: {theirs[at] if at < len(theirs) else '(none)'!r} vs "
                f"{ours[at] if at < len(ours) else '(none)'!r}",
            )
        return spec


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """What the model writes: one probability per class; which class is urgent."""

    classes: tuple[str, ...]
    urgent_class: str

    @property
    def urgent_index(self) -> int:
        return self.classes.index(self.urgent_class)

    @classmethod
    def parse(cls, o: _Obj) -> OutputSpec:
        classes = _strings(o, "classes")
        urgent = o.get("urgent_class", str)
        if urgent not in classes:
            raise o.fail("urgent_class", f"= {urgent!r} is not one of the classes {list(classes)}")
        return cls(classes, urgent)


@dataclass(frozen=True, slots=True)
class UrgentSpec:
    """When a reading is urgent: a score over threshold for ``consecutive``
    readings, or a raw sensor value beyond a hard limit (``{sensor: (lo, hi)}``,
    either bound may be None). A score episode ends after ``release`` readings
    in a row below the threshold (:mod:`shared.urgent`); a manifest without
    ``release`` means 1, the rule before it existed."""

    score_threshold: float
    consecutive: int
    hard_limits: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    release: int = 1

    @classmethod
    def parse(cls, o: _Obj) -> UrgentSpec:
        limits: dict[str, tuple[float | None, float | None]] = {}
        raw = o.sub("hard_limits")
        for sensor in raw.obj:
            lim = raw.sub(sensor)
            lo = None if lim.obj.get("min") is None else lim.num("min")
            hi = None if lim.obj.get("max") is None else lim.num("max")
            if lo is None and hi is None:
                raise raw.fail(sensor, "needs 'min', 'max' or both")
            if lo is not None and hi is not None and lo > hi:
                raise raw.fail(sensor, f"has min {lo} above max {hi}")
            limits[sensor] = (lo, hi)
        release = 1
        if "release" in o.obj:
            value = o.obj["release"]
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= MAX_RULE_READINGS
            ):
                raise o.fail(
                    "release",
                    f"= {value!r} must be a whole number of readings in [1, {MAX_RULE_READINGS}] "
                    "(how many "
                    "readings in a row below the threshold end a score episode; 1 = the first)",
                )
            release = value
        return cls(
            o.num("score_threshold", 0.0, 1.0),
            int(o.num("consecutive", 1, MAX_RULE_READINGS)),
            limits,
            release,
        )


@dataclass(frozen=True, slots=True)
class Histogram:
    """Reference distribution: ``edges`` are the k-1 inner cut points of k bins
    (the outer bins are open), ``proportions`` the k bin shares, summing to 1."""

    edges: tuple[float, ...]
    proportions: tuple[float, ...]

    @classmethod
    def parse(cls, o: _Obj) -> Histogram:
        edges, props = _floats(o, "edges"), _floats(o, "proportions")
        if len(props) != len(edges) + 1 or len(props) < 2:
            raise o.fail(
                "proportions",
                f"must have len(edges)+1 = {len(edges) + 1} entries, has {len(props)}",
            )
        if any(b <= a for a, b in itertools.pairwise(edges)):
            raise o.fail("edges", "must be strictly increasing")
        if any(p < 0 for p in props) or abs(sum(props) - 1.0) > 1e-6:
            raise o.fail("proportions", "must be >= 0 and sum to 1")
        return cls(edges, props)


@dataclass(frozen=True, slots=True)
class SensorReference:
    """One sensor's training data: ``location`` and ``scale`` (a robust standard
    deviation, > 0) of its normal rows, which per-device baselines map onto
    (:func:`shared.baseline.robust_stats`); ``low`` and ``high`` (the 0.1 % and
    99.9 % quantiles of all rows), the range beyond which values count as far
    outside the training distribution (:func:`shared.features.expected_range`)."""

    location: float
    scale: float
    low: float
    high: float

    @classmethod
    def parse(cls, o: _Obj) -> SensorReference:
        ref = cls(o.num("location"), o.num("scale"), o.num("low"), o.num("high"))
        if not ref.scale > 0:
            raise o.fail("scale", f"= {ref.scale} must be > 0")
        if ref.low > ref.high:
            raise o.fail("low", f"= {ref.low} is above high {ref.high}")
        return ref


@dataclass(frozen=True, slots=True)
class Lineage:
    parent: str | None
    data_window: str
    data_hash: str
    pipeline_run: str

    @classmethod
    def parse(cls, o: _Obj) -> Lineage:
        return cls(
            o.get("parent", str, optional=True),
            o.get("data_window", str),
            o.get("data_hash", str),
            o.get("pipeline_run", str),
        )


@dataclass(frozen=True, slots=True)
class TestVectors:
    """Inputs and the scores the model must give for them (within ``atol``)."""

    __test__ = False  # not a pytest class

    inputs: tuple[tuple[float, ...], ...]
    expected_scores: tuple[tuple[float, ...], ...]
    atol: float

    @classmethod
    def parse(cls, o: _Obj, n_features: int, n_classes: int) -> TestVectors:
        inputs = o.get("inputs", list)
        expected = o.get("expected_scores", list)
        if not inputs or len(inputs) != len(expected):
            raise o.fail("inputs", "must be non-empty and as long as 'expected_scores'")
        rows: list[tuple[float, ...]] = []
        outs: list[tuple[float, ...]] = []
        for i, (x, y) in enumerate(zip(inputs, expected, strict=True)):
            row = _floats(_Obj({f"inputs[{i}]": x}, o.where), f"inputs[{i}]")
            out = _floats(_Obj({f"expected_scores[{i}]": y}, o.where), f"expected_scores[{i}]")
            if len(row) != n_features:
                raise o.fail(f"inputs[{i}]", f"must have {n_features} values, one per input")
            if len(out) != n_classes:
                raise o.fail(
                    f"expected_scores[{i}]", f"must have {n_classes} scores, one per class"
                )
            rows.append(row)
            outs.append(out)
        return cls(tuple(rows), tuple(outs), o.num("atol", 0.0, 1.0))


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """Everything ``manifest.json`` says about one model version."""

    name: str
    version: str
    variant: Literal["edge", "heavy"]
    created: str
    model: ModelFile
    input: InputSpec
    output: OutputSpec
    urgent: UrgentSpec
    reference_sensors: dict[str, SensorReference]
    reference_features: dict[str, Histogram]
    reference_score: Histogram
    metrics: dict[str, float]
    lineage: Lineage
    min_agent_version: str
    test_vectors: TestVectors
    files: tuple[PackageFile, ...] = ()
    """Every file of the package but the manifest and its signature (empty: an older manifest)."""
    latency_budget_ms: float | None = None
    """The latency p99 per reading (ms) a device running this model must keep; over it,
    the hub shows the device as degraded (None: not declared, an older manifest; the
    hub's ``--latency-budget-ms`` stands in)."""

    @property
    def version_key(self) -> tuple[int, int, int]:
        return parse_version(self.version)

    def expected_ranges(self) -> list[tuple[float, float]]:
        """Each sensor's training range ``(low, high)``, in sensor order."""
        return [
            (self.reference_sensors[n].low, self.reference_sensors[n].high)
            for n in self.input.sensor_names
        ]

    @classmethod
    def from_dict(cls, obj: Any) -> ModelManifest:
        """Validate a decoded manifest, raising :class:`ManifestError` naming the field."""
        o = _Obj(obj, "")
        if o.get("format", int) != FORMAT:
            raise o.fail(
                "format",
                f"is {o.obj['format']}; this build reads format {FORMAT} (format 2 declares the "
                "sensors in the input spec): rebuild the package with this edgeloop "
                "('edgeloop-hub models build --force' or 'models train')",
            )
        name = o.get("name", str)
        if not _NAME_RE.fullmatch(name):
            raise o.fail("name", f"= {name!r} must be 1-64 of a-z 0-9 _ . - (lowercase)")
        version, min_agent = o.get("version", str), o.get("min_agent_version", str)
        for key, value in (("version", version), ("min_agent_version", min_agent)):
            try:
                parse_version(value)
            except ValueError as exc:
                raise o.fail(key, str(exc)) from None
        variant = o.get("variant", str)
        if variant not in ("edge", "heavy"):
            raise o.fail("variant", f"= {variant!r} must be 'edge' or 'heavy'")
        inp, out = InputSpec.parse(o.sub("input")), OutputSpec.parse(o.sub("output"))
        urgent = UrgentSpec.parse(o.sub("urgent"))
        unknown = [k for k in urgent.hard_limits if k not in inp.sensor_names]
        if unknown:
            raise (
                o.sub("urgent")
                .sub("hard_limits")
                .fail(
                    unknown[0], f"names no sensor of the input (sensors: {list(inp.sensor_names)})"
                )
            )
        ref = o.sub("reference")
        ref_sensors_o = ref.sub("sensors")
        ref_sensors = {k: SensorReference.parse(ref_sensors_o.sub(k)) for k in ref_sensors_o.obj}
        lacking = [k for k in inp.sensor_names if k not in ref_sensors]
        if lacking:
            raise ref_sensors_o.fail(lacking[0], "is missing: every sensor needs its reference")
        ref_feats = ref.sub("features")
        reference = {k: Histogram.parse(ref_feats.sub(k)) for k in ref_feats.obj}
        missing = [k for k in inp.features if k not in reference]
        if missing:
            raise ref_feats.fail(
                missing[0], "is missing: every input feature needs a reference histogram"
            )
        metrics_o = o.sub("metrics")
        metrics = {k: metrics_o.num(k) for k in metrics_o.obj}
        model = ModelFile.parse(o.sub("model"))
        return cls(
            name=name,
            version=version,
            variant=variant,
            created=o.get("created", str),
            model=model,
            input=inp,
            output=out,
            urgent=urgent,
            reference_sensors={k: ref_sensors[k] for k in inp.sensor_names},
            reference_features=reference,
            reference_score=Histogram.parse(ref.sub("score")),
            metrics=metrics,
            lineage=Lineage.parse(o.sub("lineage")),
            min_agent_version=min_agent,
            test_vectors=TestVectors.parse(
                o.sub("test_vectors"), len(inp.features), len(out.classes)
            ),
            files=_files(o, model),
            latency_budget_ms=_latency_budget(o),
        )

    def to_dict(self) -> dict[str, Any]:
        def hist(h: Histogram) -> dict[str, Any]:
            return {"edges": list(h.edges), "proportions": list(h.proportions)}

        out: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "variant": self.variant,
            "created": self.created,
            "model": {
                "file": self.model.file,
                "sha256": self.model.sha256,
                "size": self.model.size,
                "input_name": self.model.input_name,
                "scores_output": self.model.scores_output,
                "quantization": self.model.quantization,
            },
            "input": {
                "sensors": [
                    {
                        "name": x.name,
                        "unit": x.unit,
                        "min": x.min,
                        "max": x.max,
                        "fallback": x.fallback,
                    }
                    for x in self.input.sensors
                ],
                "features": list(self.input.features),
                "dtype": self.input.dtype,
                "window": self.input.window,
            },
            "output": {
                "classes": list(self.output.classes),
                "urgent_class": self.output.urgent_class,
            },
            "urgent": {
                "score_threshold": self.urgent.score_threshold,
                "consecutive": self.urgent.consecutive,
                "release": self.urgent.release,
                "hard_limits": {
                    s: {"min": lo, "max": hi} for s, (lo, hi) in self.urgent.hard_limits.items()
                },
            },
            "reference": {
                "sensors": {
                    k: {"location": r.location, "scale": r.scale, "low": r.low, "high": r.high}
                    for k, r in self.reference_sensors.items()
                },
                "features": {k: hist(v) for k, v in self.reference_features.items()},
                "score": hist(self.reference_score),
            },
            "metrics": dict(self.metrics),
            "lineage": {
                "parent": self.lineage.parent,
                "data_window": self.lineage.data_window,
                "data_hash": self.lineage.data_hash,
                "pipeline_run": self.lineage.pipeline_run,
            },
            "min_agent_version": self.min_agent_version,
            "test_vectors": {
                "inputs": [list(r) for r in self.test_vectors.inputs],
                "expected_scores": [list(r) for r in self.test_vectors.expected_scores],
                "atol": self.test_vectors.atol,
            },
        }
        if self.latency_budget_ms is not None:
            out["latency_budget_ms"] = self.latency_budget_ms
        if self.files:
            out["files"] = [
                {"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files
            ]
        return out


@dataclass(frozen=True, slots=True)
class ModelPackage:
    """A validated package on disk; ``manifest_bytes`` are what the signature covers."""

    path: Path
    manifest: ModelManifest
    manifest_bytes: bytes
    signature: bytes | None

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model.file


def manifest_file_bytes(manifest: ModelManifest) -> bytes:
    """``manifest.json`` as :func:`write_manifest` writes it (sorted keys, two-space
    indent, final newline). A signature covers the bytes on disk, not these: a
    package's manifest is never re-serialized once written."""
    return (json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def write_manifest(directory: Path, manifest: ModelManifest) -> bytes:
    """Write ``manifest.json`` (stable key order) and return its bytes."""
    data = manifest_file_bytes(manifest)
    (directory / MANIFEST_FILE).write_bytes(data)
    return data


def parse_manifest(data: bytes, source: Path) -> ModelManifest:
    """The manifest in ``data`` (the bytes of ``source``), or :class:`ManifestError` naming it."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"{source} is not valid JSON: {exc}", path=str(source)) from None
    try:
        return ModelManifest.from_dict(obj)
    except ManifestError as exc:
        raise ManifestError(f"{source}: {exc}", path=str(source), field=exc.field) from None


def _check_file(package: Path, name: str, size: int, sha256: str, field: str) -> None:
    """Raise :class:`ManifestError` unless ``package/name`` has this size and sha256."""
    file = package / name
    if not file.is_file():
        raise ManifestError(f"model package {str(package)!r} lacks {name}", path=str(file))
    found = file.stat().st_size
    if found != size:
        raise ManifestError(
            f"{file}: size {found} bytes differs from the manifest's {size}; "
            "the file is truncated or replaced",
            path=str(file),
            field=f"{field}.size",
        )
    digest = sha256_file(file)
    if digest != sha256:
        raise ManifestError(
            f"{file}: sha256 {digest[:12]}... differs from the manifest's "
            f"{sha256[:12]}...; the file is corrupt or replaced",
            path=str(file),
            field=f"{field}.sha256",
        )


def load_package(path: Path) -> ModelPackage:
    """Load and check a model package directory, or raise :class:`ManifestError`."""
    if not path.is_dir():
        raise ManifestError(f"model package {str(path)!r} is not a directory", path=str(path))
    mpath = path / MANIFEST_FILE
    try:
        data = mpath.read_bytes()
    except OSError as exc:
        raise ManifestError(
            f"model package {str(path)!r} has no readable {MANIFEST_FILE} ({exc.strerror}); "
            "build one with 'edgeloop-hub models build'",
            path=str(mpath),
        ) from None
    manifest = parse_manifest(data, mpath)
    _check_file(path, manifest.model.file, manifest.model.size, manifest.model.sha256, "model")
    for i, entry in enumerate(manifest.files):
        if entry.path != manifest.model.file:
            _check_file(path, entry.path, entry.size, entry.sha256, f"files[{i}]")
    sig = path / SIGNATURE_FILE
    return ModelPackage(path, manifest, data, sig.read_bytes() if sig.is_file() else None)
