"""The command-line options that say how to read recordings, for every hub command that reads them.

``models train`` and ``batch score`` take the same options, spelled as the
agent's (``--csv-map``, ``--csv-delimiter``) where the agent has them, so a
file read one way is read the same way by the others. Nothing heavy is
imported: building a parser stays fast.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from shared.columns import parse_column_map

if TYPE_CHECKING:
    from cloud_hub.recordings import CsvOptions

__all__ = ["add_recording_options", "csv_options"]


def _column_map(text: str) -> dict[str, str]:
    try:
        return parse_column_map(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_recording_options(parser: argparse.ArgumentParser) -> None:
    """``--csv-map``, ``--csv-delimiter``, ``--ts-column``, ``--ts-unit``, ``--device-column``."""
    parser.add_argument(
        "--csv-map",
        type=_column_map,
        default={},
        metavar="SENSOR=COLUMN,...",
        help="where each sensor is when its column has another name (as the agent's --csv-map)",
    )
    parser.add_argument(
        "--csv-delimiter",
        choices=("auto", ",", ";", "tab"),
        default="auto",
        metavar="auto|,|;|tab",
        help="the separator: auto, ',', ';' or tab (default: auto, detected from the header)",
    )
    parser.add_argument(
        "--ts-column",
        default="ts",
        metavar="COLUMN",
        help="timestamp column: ISO 8601, or unix seconds or milliseconds (default: ts)",
    )
    parser.add_argument(
        "--ts-unit",
        choices=("auto", "s", "ms"),
        default="auto",
        help="unit of a numeric timestamp (default: auto, ms when over 1e11)",
    )
    parser.add_argument(
        "--device-column",
        metavar="COLUMN",
        help="a column naming each row's device: one series (feature window, urgent rule) per "
        "device (default: one series per file)",
    )


def csv_options(args: argparse.Namespace, label_column: str | None = None) -> CsvOptions:
    """The :class:`~cloud_hub.recordings.CsvOptions` the options of
    :func:`add_recording_options` ask for."""
    from cloud_hub.recordings import CsvOptions  # noqa: PLC0415

    return CsvOptions(
        delimiter=args.csv_delimiter,
        ts_column=args.ts_column,
        ts_unit=args.ts_unit,
        column_map=dict(args.csv_map),
        label_column=label_column,
        device_column=args.device_column,
    )
