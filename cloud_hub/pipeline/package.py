"""Writing a model package (DESIGN.md section 4) with :mod:`shared.manifest`.

A package is written in two steps, so the pipeline can evaluate the very file
it ships: :func:`save_model` writes ``model.onnx`` into the package directory;
the pipeline scores with it; :func:`complete_package` then computes the
reference statistics and test vectors, writes ``manifest.json`` with
:func:`shared.manifest.write_manifest` and reloads the whole package with
:func:`shared.manifest.load_package`, so nothing leaves here that the agent
would refuse. The manifest lists every file of the package with its sha256 and
size (``files``). Nothing here signs: the commands that build packages sign
them afterwards when a signing key exists (:mod:`cloud_hub.keys`).

What the numbers in the manifest mean:

- **Reference sensors** (``reference.sensors``): per sensor, from the ``_last``
  feature of the training rows (the reading itself, dropouts carried forward),
  by :func:`shared.baseline.robust_stats`: ``location`` and ``scale`` (the
  midpoint of the 5 % and 95 % quantiles and their distance / 3.29, floored so a
  constant sensor still has one) of the *normal* rows, ``low``/``high`` (the
  0.1 % and 99.9 % quantiles) of all rows. The agent counts values far beyond
  ``[low, high]`` (:func:`shared.features.expected_range`); per-device baselines
  map a device's own location and scale onto these (:mod:`shared.baseline`
  says why these statistics and why normal rows).
- **Reference histograms** (``reference.features``, for drift tracking: the
  hub side is not built yet): per feature,
  the inner edges are the 10 %, 20 %, ... 90 % quantiles of the training rows
  (rounded to 6 significant digits, duplicates merged), so each of the ~10 bins
  starts with about a tenth of the data; ``proportions`` are the shares measured
  with those rounded edges.
- **Reference score** (``reference.score``): the score is ``1 - P(normal)``
  (:func:`drift_score`) of *this package's own model*, on the training rows,
  binned on the fixed edges :data:`SCORE_EDGES` (fine near 0 and 1, where a
  classifier's scores pile up). Fixed edges let scores of different model
  versions be compared bin for bin.
- **Bins**: value ``x`` falls in bin ``i`` when ``edges[i-1] <= x < edges[i]``
  (the first and last bins are open). The rule, the quantile edges, the score
  edges and the score live in :mod:`shared.drift.binning`, which drift
  counting (:mod:`shared.drift.counts`) imports too.
- **Test vectors**: holdout rows covering every class; the expected scores are
  what onnxruntime gives on the packaged ``model.onnx`` for **each row scored
  alone** (a batch of one, as on a device): a dynamically quantized model's
  output depends slightly on the batch it is scored in.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import onnx

from cloud_hub.inference import OnnxScorer
from cloud_hub.pipeline.convert import INPUT_NAME, SCORES_OUTPUT
from shared.baseline import robust_stats
from shared.drift.binning import (
    REFERENCE_BINS,
    SCORE_EDGES,
    binned_proportions,
    drift_score,
    quantile_edges,
)
from shared.errors import ManifestError
from shared.features import SensorSpec
from shared.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    Histogram,
    InputSpec,
    Lineage,
    ModelFile,
    ModelManifest,
    ModelPackage,
    OutputSpec,
    PackageFile,
    SensorReference,
    TestVectors,
    UrgentSpec,
    load_package,
    sha256_file,
    write_manifest,
)

__all__ = [
    "MIN_AGENT_VERSION",
    "REFERENCE_BINS",
    "SCORE_EDGES",
    "TEST_VECTOR_ATOL",
    "binned_proportions",
    "complete_package",
    "drift_score",
    "feature_histograms",
    "package_files",
    "pick_test_rows",
    "save_model",
    "score_histogram",
    "sensor_references",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

MIN_AGENT_VERSION: Final = "0.1.0"
TEST_VECTOR_ATOL: Final = 1e-4


def feature_histograms(
    x: F32, names: tuple[str, ...], bins: int = REFERENCE_BINS
) -> dict[str, Histogram]:
    """Reference histogram per feature column, with quantile inner edges
    (:func:`shared.drift.binning.quantile_edges`)."""
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(f"feature_histograms: x must be (n, {len(names)}), got {x.shape}")
    out: dict[str, Histogram] = {}
    for j, name in enumerate(names):
        col = x[:, j].astype(np.float64)
        edges = quantile_edges(col, bins)
        out[name] = Histogram(edges, binned_proportions(col, edges))
    return out


def sensor_references(
    x: F32, sensors: tuple[SensorSpec, ...], normal: npt.NDArray[np.bool_] | None = None
) -> dict[str, SensorReference]:
    """Reference statistics per sensor from the ``_last`` columns of feature rows ``x``
    (the first ``len(sensors)`` columns; see the module docstring): ``low``/``high``
    of all rows, ``location``/``scale`` of the ``normal`` rows (None: all rows are normal),
    each by :func:`shared.baseline.robust_stats`."""
    n = len(sensors)
    if x.ndim != 2 or x.shape[1] < n or x.shape[0] == 0:
        raise ValueError(f"sensor_references: x must be (n > 0, >= {n}), got {x.shape}")
    if normal is not None and (normal.shape != (x.shape[0],) or not normal.any()):
        raise ValueError(
            f"sensor_references: normal must mark at least one of the {x.shape[0]} rows"
        )
    out: dict[str, SensorReference] = {}
    for j, sensor in enumerate(sensors):
        col = x[:, j]
        every = robust_stats(col)
        own = every if normal is None else robust_stats(col[normal])
        out[sensor.name] = SensorReference(
            location=float(f"{own.location:.6g}"),
            scale=float(f"{own.scale:.6g}"),
            low=float(f"{every.low:.6g}"),
            high=float(f"{every.high:.6g}"),
        )
    return out


def score_histogram(score: F64, edges: tuple[float, ...] = SCORE_EDGES) -> Histogram:
    """Reference histogram of :func:`drift_score` values on fixed edges."""
    return Histogram(edges, binned_proportions(score, edges))


def pick_test_rows(y: I64, n_classes: int, n: int = 8, seed: int = 0) -> npt.NDArray[np.intp]:
    """``n`` seeded row indices covering every class as evenly as the rows allow."""
    if n < n_classes:
        raise ValueError(f"pick_test_rows: n={n} cannot cover {n_classes} classes")
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == k) for k in range(n_classes)]
    empty = [k for k, rows in enumerate(by_class) if rows.size == 0]
    if empty:
        raise ValueError(
            f"pick_test_rows: no row of class {empty[0]}; the test vectors must cover it"
        )
    quota = [n // n_classes + (1 if k < n % n_classes else 0) for k in range(n_classes)]
    picked = [
        rng.choice(rows, size=min(q, rows.size), replace=False)
        for rows, q in zip(by_class, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked)).astype(np.intp)


def save_model(directory: Path, model: onnx.ModelProto) -> Path:
    """Create the package directory (it must not hold a package yet) and write ``model.onnx``."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise ManifestError(
            f"package directory {str(directory)!r} is not empty; write packages into a fresh "
            "directory",
            path=str(directory),
        )
    path = directory / MODEL_FILE
    path.write_bytes(model.SerializeToString())
    return path


def package_files(directory: Path) -> tuple[PackageFile, ...]:
    """Every file in ``directory`` but the manifest and its signature, by name, hashed."""
    return tuple(
        PackageFile(p.name, sha256_file(p), p.stat().st_size)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name not in (MANIFEST_FILE, SIGNATURE_FILE)
    )


def complete_package(
    directory: Path,
    *,
    name: str,
    version: str,
    variant: Literal["edge", "heavy"],
    quantization: Literal["int8-dynamic", "int8-static", "fp32"],
    sensors: tuple[SensorSpec, ...],
    window: int,
    classes: tuple[str, ...],
    urgent: UrgentSpec,
    reference_x: F32,
    reference_scores: F32,
    metrics: dict[str, float],
    reference_normal: npt.NDArray[np.bool_] | None = None,
    lineage: Lineage,
    test_inputs: F32,
    urgent_class: str = "urgent",
    normal_class: str = "normal",
    min_agent_version: str = MIN_AGENT_VERSION,
    created: datetime | None = None,
    latency_budget_ms: float | None = None,
) -> ModelPackage:
    """Write ``manifest.json`` for the ``model.onnx`` that :func:`save_model` wrote.

    ``sensors`` are the model's input sensors, in the order of its readings;
    ``reference_x`` are the training rows and ``reference_scores`` this model's
    scores for them (scored as the model will be served); ``reference_normal``
    marks the normal ones (None: all), whose sensor statistics baselines map onto. Test vectors are
    scored here, row by row, on the packaged file. ``latency_budget_ms``: the latency p99
    per reading over which a device running the model shows as degraded (None: the
    manifest declares none). Returns the package as
    :func:`load_package` reads it back.
    """
    inp = InputSpec(sensors, window)
    model_path = directory / MODEL_FILE
    scorer = OnnxScorer(model_path, INPUT_NAME, SCORES_OUTPUT)
    expected = scorer.scores(test_inputs, batch_size=1)
    if expected.shape[1] != len(classes):
        raise ManifestError(
            f"{model_path}: the model gives {expected.shape[1]} scores per row but the package "
            f"declares {len(classes)} classes {list(classes)}",
            path=str(model_path),
        )
    when = (created or datetime.now(UTC)).astimezone(UTC)
    listed = {f.path: f for f in package_files(directory)}
    manifest = ModelManifest.from_dict(
        ModelManifest(
            name=name,
            version=version,
            variant=variant,
            created=when.isoformat(timespec="seconds").replace("+00:00", "Z"),
            model=ModelFile(
                file=MODEL_FILE,
                sha256=listed[MODEL_FILE].sha256,
                size=listed[MODEL_FILE].size,
                input_name=INPUT_NAME,
                scores_output=SCORES_OUTPUT,
                quantization=quantization,
            ),
            input=inp,
            output=OutputSpec(classes, urgent_class),
            urgent=urgent,
            reference_sensors=sensor_references(reference_x, sensors, reference_normal),
            reference_features=feature_histograms(reference_x, inp.features),
            reference_score=score_histogram(drift_score(reference_scores, classes, normal_class)),
            metrics=dict(metrics),
            lineage=lineage,
            min_agent_version=min_agent_version,
            test_vectors=TestVectors(
                inputs=tuple(tuple(float(v) for v in row) for row in test_inputs.tolist()),
                expected_scores=tuple(tuple(float(v) for v in row) for row in expected.tolist()),
                atol=TEST_VECTOR_ATOL,
            ),
            files=tuple(listed.values()),
            latency_budget_ms=latency_budget_ms,
        ).to_dict()
    )
    write_manifest(directory, manifest)
    package = load_package(directory)
    log.info(
        "wrote package %s %s (%s, %d bytes) in %s",
        name,
        version,
        quantization,
        manifest.model.size,
        directory,
    )
    return package
