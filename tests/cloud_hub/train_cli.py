"""The ``models train`` command line the training tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.cli import main


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


def run_cli(
    capsys: pytest.CaptureFixture[str], argv: list[str], status: int = 0
) -> tuple[list[str], str]:
    """Run the hub's CLI in-process; assert its exit status; its stdout lines and stderr."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == status, (out, err)
    return out.splitlines(), err
