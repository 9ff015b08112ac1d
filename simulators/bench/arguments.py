"""What the benchmarks' command lines share: numbers that must be in range, directories."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = [
    "add_dir_options",
    "add_models_dir_option",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def add_models_dir_option(parser: argparse.ArgumentParser) -> None:
    """``--models-dir``: where the default models are, or are built."""
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path("var/models"),
        metavar="DIR",
        help="model directory; default models are built there if missing (default: var/models)",
    )


def add_dir_options(parser: argparse.ArgumentParser, keeps: str) -> None:
    """``--models-dir`` and ``--work-dir`` (where the run keeps ``keeps``)."""
    add_models_dir_option(parser)
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"keep {keeps} here (default: a temporary directory, removed at the end)",
    )
