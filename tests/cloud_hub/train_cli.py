"""The ``models train`` command line the training tests share."""

from __future__ import annotations

from pathlib import Path


def train_argv(tmp_path: Path, *args: str) -> list[str]:
    """``models train`` arguments for a generated rig CSV (its ISO ``datetime``
    column), with the hub and the models under ``tmp_path``."""
    return [
        "models",
        "train",
        "--ts-column",
        "datetime",
        "--data-dir",
        str(tmp_path / "hub"),
        "--models-dir",
        str(tmp_path / "models"),
        *args,
    ]
