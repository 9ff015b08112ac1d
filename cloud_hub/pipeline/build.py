"""Build the default models: simulator data -> edge (int8) and heavy (fp32) packages.

The wiring of the pipeline's steps, in order:

1. simulate a labelled training set (:func:`simulators.dataset.build_training_set`)
   and split it by device into training devices and holdout devices; the last
   ``validation_fraction`` of each training device's readings is the validation
   slice (the thresholds are chosen there), the rest trains;
2. hand both to the trainer (:func:`.trainer.train_classifier_pair`, the one
   ``models train`` uses too): train the edge MLP and the heavy trees
   (:mod:`.train`), convert both to ONNX and quantize the edge model to int8
   (:mod:`.convert`), gate (the int8 edge model must agree with its fp32 twin on
   the class of at least ``min_agreement`` of the holdout rows), choose each
   model's urgent threshold (:func:`.train.choose_urgent_threshold`) on the
   validation slice, measure the metrics on the holdout devices (rows the
   threshold never saw), write the packages
   (:mod:`.package`) and publish them by renaming them into place.

Layout: ``{out_dir}/{name}/{version}/`` holding ``model.onnx`` and
``manifest.json``, for the names :data:`EDGE_NAME` and :data:`HEAVY_NAME`.

Packages are written in hidden staging directories next to their final place
and renamed into it only when both are complete and every gate passed, so a
failed or interrupted build never leaves a half-written version where a reader
looks. A build is idempotent: when both packages of the version already exist,
load cleanly and were built from the same data settings, they are returned as
they are (``reused=True``) unless ``force=True``. A version that exists but was
built from other settings is an error, not a silent overwrite: versions are
meant to be immutable.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from cloud_hub.pipeline.recorded import time_sides
from cloud_hub.pipeline.train import (
    EdgeTrainingConfig,
    HeavyTrainingConfig,
    PipelineError,
    train_edge,
)
from cloud_hub.pipeline.trainer import PairSpec, Split, TrainResult, train_classifier_pair
from shared.errors import ManifestError
from shared.features import DEFAULT_WINDOW
from shared.manifest import ModelPackage, load_package, parse_version
from simulators.dataset import TrainingSet, build_training_set
from simulators.sensors import SENSORS

__all__ = [
    "DEFAULT_VERSION",
    "EDGE_NAME",
    "HARD_LIMITS",
    "HEAVY_NAME",
    "BuildResult",
    "DataSettings",
    "build_default_models",
    "retrain_edge_sklearn",
]

log = logging.getLogger(__name__)

EDGE_NAME: Final = "machine-edge"
HEAVY_NAME: Final = "machine-heavy"
DEFAULT_VERSION: Final = "1.1.0"
HARD_LIMITS: Final[dict[str, tuple[float | None, float | None]]] = {
    "temperature": (None, 110.0),  # degC: the simulator's overheat starts above this
    "vibration": (None, 15.0),  # mm/s: the simulator's vibration spike starts above this
}
"""Raw sensor limits that make a reading urgent whatever the model says."""
URGENT_CLASS: Final = "urgent"
NORMAL_CLASS: Final = "normal"


BuildResult = TrainResult
"""What :func:`build_default_models` produced (or found): a :class:`.trainer.TrainResult`."""


@dataclass(frozen=True, slots=True)
class DataSettings:
    """Which simulated data a build trains and evaluates on."""

    seed: int = 7
    devices: int = 16
    readings_per_device: int = 4000
    window: int = DEFAULT_WINDOW
    holdout_fraction: float = 0.2
    validation_fraction: float = 0.1

    def describe(self) -> str:
        """The manifest's ``lineage.data_window``. Deterministic from the
        settings: it doubles as the key that says whether an existing version
        was built from the same data."""
        return (
            f"simulators.dataset.build_training_set(seed={self.seed}, devices={self.devices}, "
            f"readings_per_device={self.readings_per_device}, window={self.window}); training "
            f"rows of split(holdout_fraction={self.holdout_fraction}, seed={self.seed}, "
            f"by='device') but the last validation_fraction={self.validation_fraction} of each "
            "device's rows (the validation slice)"
        )

    def load(self) -> tuple[TrainingSet, TrainingSet, TrainingSet, TrainingSet]:
        """``(data, train, validation, holdout)``: holdout by whole devices, and
        of the other devices each one's last ``validation_fraction`` of rows for
        validation (after the ``window - 1`` rows whose window reaches back
        across the cut, dropped), the rest for training. No two parts share a
        reading."""
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction}"
            )
        data = build_training_set(
            self.seed,
            devices=self.devices,
            readings_per_device=self.readings_per_device,
            window=self.window,
        )
        fitting, holdout = data.split(self.holdout_fraction, self.seed)
        side = np.empty(len(fitting), dtype=np.int8)
        for d in np.unique(fitting.device).tolist():
            rows = np.flatnonzero(fitting.device == d)
            side[rows] = time_sides(
                np.arange(rows.size), data.window, self.validation_fraction, 0.0
            )
        train, validation = fitting.subset(side == 0), fitting.subset(side == 1)
        classes = data.classes
        if URGENT_CLASS not in classes or NORMAL_CLASS not in classes:
            raise PipelineError(
                f"the training set's classes {list(classes)} lack "
                f"{URGENT_CLASS!r} or {NORMAL_CLASS!r}"
            )
        for part, what, use in (
            (
                validation,
                f"validation slice (the last {self.validation_fraction:.0%} of "
                "each training device's readings)",
                "choose the thresholds",
            ),
            (
                holdout,
                f"holdout ({self.holdout_fraction:.0%} of {self.devices} devices)",
                "evaluate",
            ),
        ):
            counts = np.bincount(part.y, minlength=len(classes))
            if not np.all(counts > 0):
                raise PipelineError(
                    f"the {what} has rows per class "
                    f"{dict(zip(classes, counts.tolist(), strict=True))}; every class is "
                    f"needed to {use}: simulate more devices or readings per device"
                )
        return data, train, validation, holdout


def _find_existing(
    edge_dir: Path, heavy_dir: Path, data_window: str
) -> tuple[ModelPackage, ModelPackage] | None:
    """Both packages when they exist, load cleanly and match ``data_window``;
    None when something must be (re)built; raises when a valid package of the
    version was built from other data, even if its sibling is missing."""
    found: list[ModelPackage] = []
    for path, variant in ((edge_dir, "edge"), (heavy_dir, "heavy")):
        if not path.exists():
            continue
        try:
            pkg = load_package(path)
        except ManifestError as exc:
            log.warning("existing package is not valid (%s); rebuilding it", exc)
            continue
        m = pkg.manifest
        if m.variant != variant:
            log.warning(
                "%s holds a %s package, expected %s; rebuilding it", path, m.variant, variant
            )
            continue
        if m.lineage.data_window != data_window:
            raise PipelineError(
                f"{path} already holds {m.name} {m.version} built from other data "
                f"({m.lineage.data_window!r}); versions are immutable: choose another version "
                "or output directory, or rebuild it on purpose with 'edgeloop-hub models build --force'"
            )
        found.append(pkg)
    return (found[0], found[1]) if len(found) == 2 else None


def build_default_models(
    out_dir: Path,
    seed: int = 7,
    *,
    devices: int = 16,
    readings_per_device: int = 4000,
    window: int = DEFAULT_WINDOW,
    holdout_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    min_agreement: float = 0.99,
    consecutive: int = 1,
    version: str = DEFAULT_VERSION,
    force: bool = False,
    threads: int = 1,
    edge_config: EdgeTrainingConfig | None = None,
    heavy_config: HeavyTrainingConfig | None = None,
) -> BuildResult:
    """Build (or find) the default ``machine-edge`` and ``machine-heavy`` packages.

    Same arguments, same dataset hash and same metrics. Raises
    :class:`~cloud_hub.pipeline.convert.GateError` when the int8 edge model
    agrees with its fp32 twin on less than ``min_agreement`` of the holdout,
    :class:`~cloud_hub.pipeline.train.PipelineError` when the data cannot
    support a model or the version exists with other data, ``ValueError`` for
    bad arguments.

    ``consecutive`` goes to the manifest's urgent rule. ``threads`` caps the
    BLAS/OpenMP threads of training and the onnxruntime threads of scoring.
    One is the default on purpose: on a machine whose cores are busy with
    other work (a broker, the hub, tests), OpenMP threads that wait for each
    other made gradient boosting ten times slower here, not faster.

    >>> result = build_default_models(Path("var/models"))  # doctest: +SKIP
    >>> result.edge  # doctest: +SKIP
    PosixPath('var/models/machine-edge/1.1.0')
    """
    t0 = time.perf_counter()
    parse_version(version)
    if consecutive < 1:
        raise ValueError(f"consecutive must be >= 1, got {consecutive}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    settings = DataSettings(
        seed, devices, readings_per_device, window, holdout_fraction, validation_fraction
    )
    out_dir = Path(out_dir)
    edge_dir, heavy_dir = out_dir / EDGE_NAME / version, out_dir / HEAVY_NAME / version
    if not force:
        found = _find_existing(edge_dir, heavy_dir, settings.describe())
        if found is not None:
            edge_pkg, heavy_pkg = found
            log.info(
                "models %s already built in %s; reusing them ('edgeloop-hub models build --force' rebuilds)",
                version,
                out_dir,
            )
            return BuildResult(
                edge=edge_dir,
                heavy=heavy_dir,
                version=version,
                metrics={
                    "edge": dict(edge_pkg.manifest.metrics),
                    "heavy": dict(heavy_pkg.manifest.metrics),
                },
                elapsed_s=time.perf_counter() - t0,
                dataset_sha256=edge_pkg.manifest.lineage.data_hash,
                run_id=edge_pkg.manifest.lineage.pipeline_run,
                reused=True,
            )
    try:  # before the minutes of work, not after
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PipelineError(
            f"cannot use {str(out_dir)!r} as the model directory: {exc.strerror or exc}"
        ) from None
    with threadpool_limits(limits=threads):
        return _build(
            edge_dir,
            heavy_dir,
            settings,
            t0=t0,
            min_agreement=min_agreement,
            consecutive=consecutive,
            version=version,
            threads=threads,
            edge_config=edge_config,
            heavy_config=heavy_config,
        )


def retrain_edge_sklearn(
    out_dir: Path,
    seed: int = 7,
    *,
    devices: int = 16,
    readings_per_device: int = 4000,
    window: int = DEFAULT_WINDOW,
    holdout_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    version: str = DEFAULT_VERSION,
    threads: int = 1,
    edge_config: EdgeTrainingConfig | None = None,
) -> Pipeline:
    """The fitted scikit-learn pipeline the edge package was converted from.

    Packages keep no pickle, so this retrains it; training is seeded, so it is
    the same model. For baselines (per-row ``predict_proba``) and conversion
    checks. When ``{out_dir}/machine-edge/{version}`` exists, its lineage must
    name the same data, else :class:`PipelineError`.
    """
    settings = DataSettings(
        seed, devices, readings_per_device, window, holdout_fraction, validation_fraction
    )
    with threadpool_limits(limits=threads):
        data, train, _, _ = settings.load()
        edge_dir = Path(out_dir) / EDGE_NAME / version
        if edge_dir.exists():
            lineage = load_package(edge_dir).manifest.lineage
            # The hash covers the whole simulated set; the data window also says
            # which of its rows trained (the validation slice did not).
            if lineage.data_hash != data.sha256 or lineage.data_window != settings.describe():
                raise PipelineError(
                    f"{edge_dir} was trained on data {lineage.data_hash[:12]}... "
                    f"({lineage.data_window!r}), not on these settings' data "
                    f"{data.sha256[:12]}... ({settings.describe()!r}); pass the settings "
                    "it was built with"
                )
        return train_edge(train.X, train.y, seed, len(data.classes), edge_config)


def _build(
    edge_dir: Path,
    heavy_dir: Path,
    settings: DataSettings,
    *,
    t0: float,
    min_agreement: float,
    consecutive: int,
    version: str,
    threads: int,
    edge_config: EdgeTrainingConfig | None,
    heavy_config: HeavyTrainingConfig | None,
) -> BuildResult:
    mark = time.perf_counter()
    data, train, validation, holdout = settings.load()
    dataset_s = time.perf_counter() - mark
    log.info("build step %-9s %.2f s", "dataset", dataset_s)
    spec = PairSpec(
        edge_name=edge_dir.parent.name,
        heavy_name=heavy_dir.parent.name,
        version=version,
        sensors=SENSORS,
        window=data.window,
        classes=data.classes,
        urgent_class=URGENT_CLASS,
        normal_class=NORMAL_CLASS,
        data_window=settings.describe(),
        data_hash=data.sha256,
        hard_limits=dict(HARD_LIMITS),
        consecutive=consecutive,
        min_agreement=min_agreement,
        seed=settings.seed,
        threads=threads,
    )
    split = Split(train.X, train.y, validation.X, validation.y, holdout.X, holdout.y)
    result = train_classifier_pair(
        edge_dir.parent.parent,
        spec,
        split,
        edge_config=edge_config,
        heavy_config=heavy_config,
        report=False,
        t0=t0,
    )
    return dataclasses.replace(result, steps={"dataset": dataset_s, **result.steps})
