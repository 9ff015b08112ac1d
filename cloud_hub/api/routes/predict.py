"""``POST /v1/predict``: online inference with a registered model, on JSON rows.

Access: the read token is enough. The route writes nothing and returns only
what the model computes; its cost is bounded by ``predict_max_rows`` and the
body size limit, so it needs no more trust than reading telemetry.

Rows are checked against the manifest's input spec before anything is scored:
a missing or unknown feature name, a row of the wrong length, a value that is
not a finite number (or does not fit float32) is a 422 naming the row and the
field. An int8 model is scored one row at a time, exactly as a device scores
it (a dynamically quantized model's output depends on its batch); an fp32
model scores the whole request in one run.
"""

from __future__ import annotations

import difflib

import numpy as np
from fastapi import APIRouter, HTTPException, status

from cloud_hub.api.auth import ReadAccess
from cloud_hub.api.deps import ConfigDep, ScorersDep, StoreDep
from cloud_hub.api.errors import responses
from cloud_hub.api.params import find_model, invalid
from cloud_hub.api.schemas import PredictIn, PredictionOut, PredictOut
from cloud_hub.store.base import ModelRecord

__all__ = ["feature_matrix", "router"]

router = APIRouter(tags=["predict"], responses=responses(401, 404, 413, 422, 500))

_F32_MAX = float(np.finfo(np.float32).max)


def _label(record: ModelRecord) -> str:
    return f"model {record.name} {record.version}"


def _names_hint(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"it reads {len(names)} features: {shown} (GET /v1/models lists them all)"


def feature_matrix(body: PredictIn, record: ModelRecord) -> np.ndarray:
    """The float32 ``(rows, features)`` matrix in the manifest's order, or a 422 naming
    the first bad row and field."""
    names = record.manifest.input.features
    n = len(names)
    if body.rows is not None:
        index = {name: i for i, name in enumerate(names)}
        x = np.empty((len(body.rows), n), dtype=np.float64)
        for r, row in enumerate(body.rows):
            if len(row) != n or any(k not in index for k in row):
                for key in row:
                    if key not in index:
                        close = difflib.get_close_matches(key, names, n=1)
                        hint = f"did you mean {close[0]!r}? " if close else ""
                        raise invalid(
                            ("body", "rows", r, key),
                            f"{key!r} is not a feature of {_label(record)}; {hint}"
                            f"{_names_hint(names)}",
                            "unknown_feature",
                        )
                missing = [name for name in names if name not in row]
                raise invalid(
                    ("body", "rows", r, missing[0]),
                    f"missing: row {r} lacks {len(missing)} of the {n} features of "
                    f"{_label(record)}: {', '.join(missing[:8])}"
                    f"{', ...' if len(missing) > 8 else ''}",
                    "missing_feature",
                )
            x[r] = [row[name] for name in names]
    else:
        assert body.features is not None
        for r, values in enumerate(body.features):
            if len(values) != n:
                raise invalid(
                    ("body", "features", r),
                    f"has {len(values)} values; {_label(record)} needs {n}, in the manifest's "
                    f"order: {_names_hint(names)}",
                    "wrong_feature_count",
                )
        x = np.asarray(body.features, dtype=np.float64).reshape(len(body.features), n)
    too_big = np.abs(x) > _F32_MAX
    if too_big.any():
        r, c = (int(i) for i in np.argwhere(too_big)[0])
        field: tuple[str | int, ...] = (
            ("body", "rows", r, names[c]) if body.rows is not None else ("body", "features", r, c)
        )
        raise invalid(
            field,
            f"{x[r, c]:g} does not fit a float32 (the model's input type, max {_F32_MAX:.4g})",
            "out_of_range",
        )
    return x.astype(np.float32)


@router.post("/v1/predict", response_model=PredictOut)
def predict(
    access: ReadAccess,
    store: StoreDep,
    config: ConfigDep,
    scorers: ScorersDep,
    body: PredictIn,
) -> PredictOut:
    """Class probabilities for each row from a registered model (null version: the latest).

    Send ``rows`` (objects keyed by feature name) or ``features`` (arrays in the
    manifest's feature order, which ``GET /v1/models`` shows).
    """
    if body.n_rows > config.predict_max_rows:
        raise HTTPException(
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"{body.n_rows} rows is over this hub's limit of {config.predict_max_rows} "
            "per request; split them into several requests",
        )
    record = find_model(store, body.model, body.version)
    x = feature_matrix(body, record)
    manifest = record.manifest
    row_by_row = manifest.model.quantization != "fp32"
    scores = scorers.get(record).scores(x, batch_size=1 if row_by_row else None)
    classes = list(manifest.output.classes)
    if scores.shape != (x.shape[0], len(classes)):
        raise RuntimeError(
            f"{_label(record)} returned scores of shape {scores.shape}; its manifest "
            f"names {len(classes)} classes"
        )
    urgent = manifest.output.urgent_index
    threshold = manifest.urgent.score_threshold
    best = scores.argmax(axis=1).tolist()
    predictions = [
        PredictionOut(
            probabilities=dict(zip(classes, row, strict=True)),
            predicted_class=classes[best[i]],
            urgent_score=row[urgent],
            above_urgent_threshold=row[urgent] >= threshold,
        )
        for i, row in enumerate(scores.tolist())
    ]
    return PredictOut(
        model=record.name,
        version=record.version,
        variant=record.variant,
        quantization=manifest.model.quantization,
        scored_row_by_row=row_by_row,
        classes=classes,
        urgent_class=manifest.output.urgent_class,
        urgent_threshold=threshold,
        count=len(predictions),
        predictions=predictions,
    )
