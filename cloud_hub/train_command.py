"""``edgeloop-hub models train``: an edge and heavy pair from recorded CSV.

    edgeloop-hub models train --data FILE_OR_DIR... [--sensors a,b] [--csv-map S=COL,...]
        [--label COLUMN --urgent VALUE... [--normal VALUE]] [--normal-from T --normal-to T]
        [--name NAME] [--version V] [--force] [--false-alarm-budget X]
        [--consecutive N] [--release N] [--hard-limit SENSOR=LO:HI]... [--max-rows N]
        [--data-dir DIR] [--models-dir DIR] [--store URL]

The files are streamed, never read whole: every reading goes through the
feature window, and at most ``--max-rows`` of them (every k-th of each series)
are kept for training (:mod:`cloud_hub.pipeline.sample`).

The packages go to MODELS_DIR/NAME-edge/VERSION and MODELS_DIR/NAME-heavy/VERSION
and are registered in the store's models table, so a running hub's API lists
them at once (SQLite in WAL mode takes a second writer). Importing this module
loads nothing heavy: scikit-learn, onnxruntime and tqdm load when it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from cloud_hub.recording_options import add_recording_options
from shared.manifest import DEFAULT_LATENCY_BUDGET_MS, MAX_LATENCY_BUDGET_MS, MAX_RULE_READINGS
from shared.options import positive_int

if TYPE_CHECKING:
    from cloud_hub.pipeline.recorded import Streamed
    from cloud_hub.pipeline.trainer import TrainResult
    from cloud_hub.settings import HubSettings
    from shared.features import SensorSpec

__all__ = [
    "DEFAULT_CONSECUTIVE",
    "DEFAULT_MAX_ROWS",
    "DEFAULT_RELEASE",
    "TRAIN_OPTIONS",
    "add_train_parser",
]

TRAIN_OPTIONS: Final = ("data_dir", "models_dir", "store", "signing_key")
"""serve's options that say where the registry is."""
DEFAULT_CONSECUTIVE: Final = {"anomaly": 2, "classifier": 1}
"""``--consecutive`` by path: without labels 2, as single readings over the
budget's threshold raised about 1 false alarm per 10,000 normal readings on the
generated rig and pairs of them none; with labels 1, as 2 lost up to 7 % of the
small faults there for no false alarm saved. ``edgeloop-sim bench urgent``;
figures in the README, "Training on your own recordings"."""
DEFAULT_RELEASE: Final = 10
"""``--release``: a score episode ends after 10 readings (the default window)
under the threshold; with 1, one fault episode gave 1.7-3.8 events on average
(up to 22), with 10, 1.01-1.10 (same measurement)."""
DEFAULT_MAX_ROWS: Final = 500_000
"""Readings kept for training at most (``--max-rows``), whatever the files' length.
In the sample each costs 27 bytes per sensor (features 4 x float32, the raw reading
float64) plus 24 (timestamp, position, series, label): 216 bytes with 8 sensors,
108 MB at 500,000. Training copies the features several times over; measured, a
whole run peaks at about 0.2 GB (the libraries) plus 1.7 KB per kept reading with 8
sensors: about 1.1 GB at most at this cap (863-984 MB on 2 GB recordings), with
training in about a minute. README, "Long recordings"."""
MIN_MAX_ROWS: Final = 1000
_MIN_TRAIN_ROWS: Final = 200
_MIN_SLICE_ROWS: Final = 50
_WARN_SYNTHETIC_RECALL: Final = 0.8
"""Below this share of synthetic faults found the report warns (below
:data:`cloud_hub.pipeline.trainer.MIN_SYNTHETIC_RECALL` the model is refused)."""
_LABEL_LIKE: Final = frozenset({"label", "labels", "state", "status", "class", "fault"})
"""Unused columns with these names (any case) get a --label hint."""
_SHOWN: Final = (
    "auc_macro",
    "f1_macro",
    "urgent_recall",
    "urgent_precision",
    "false_alarm_rate",
    "synthetic_anomaly_recall",
    "auc_synthetic",
    "int8_fp32_agreement",
)


def _pairs(text: str, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"{flag}: {item!r} is not NAME=VALUE")
        if key.strip() in out:
            raise argparse.ArgumentTypeError(
                f"{flag}: {key.strip()!r} is given twice; give it once"
            )
        out[key.strip()] = value.strip()
    return out


class _MergePairs(argparse.Action):
    """An option given several times (each a comma list of NAME=VALUE): the lists
    merged into one dict; a name given twice is an error rather than the last winning."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        assert isinstance(values, dict)
        merged = dict(getattr(namespace, self.dest) or {})
        twice = [k for k in values if k in merged]
        if twice:
            raise argparse.ArgumentError(self, f"{twice[0]!r} is given twice; give it once")
        merged.update(values)
        setattr(namespace, self.dest, merged)


def _units(text: str) -> dict[str, str]:
    return _pairs(text, "--units")


def _bounds(text: str) -> tuple[float | None, float | None] | None:
    """``"LO:HI"``, ``"LO:"`` or ``":HI"`` -> ``(lo, hi)`` with None for an open side;
    None when it is not that, a side is not a finite number, both are open, or LO >= HI."""
    lo_text, sep, hi_text = text.partition(":")
    if not sep:
        return None
    out: list[float | None] = []
    for side in (lo_text.strip(), hi_text.strip()):
        try:
            value = float(side) if side else None
        except ValueError:
            return None
        if value is not None and not math.isfinite(value):
            return None
        out.append(value)
    lo, hi = out
    if (lo is None and hi is None) or (lo is not None and hi is not None and lo >= hi):
        return None
    return lo, hi


def _ranges(text: str) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for key, value in _pairs(text, "--valid-range").items():
        pair = _bounds(value)
        if pair is None or pair[0] is None or pair[1] is None:
            raise argparse.ArgumentTypeError(
                f"--valid-range: {key}={value!r} is not LO:HI with LO < HI (e.g. {key}=0:100)"
            )
        out[key] = (pair[0], pair[1])
    return out


def _hard_limit(text: str) -> tuple[str, float | None, float | None]:
    """One ``--hard-limit SENSOR=LO:HI`` (``LO:`` or ``:HI`` for one side)."""
    key, sep, value = text.partition("=")
    pair = _bounds(value) if sep and key.strip() else None
    if pair is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not SENSOR=LO:HI with numbers LO < HI, or SENSOR=LO: or SENSOR=:HI "
            "for one side (e.g. temp_in=:60 fires above 60, flow=5: below 5)"
        )
    return key.strip(), pair[0], pair[1]


def _rule_readings(text: str) -> int:
    """An argparse type: a whole number of readings the urgent rule may count."""
    value = positive_int(text)
    if value > MAX_RULE_READINGS:
        raise argparse.ArgumentTypeError(f"{value} is over {MAX_RULE_READINGS} readings")
    return value


def _number(lo: float, hi: float, what: str) -> Callable[[str], float]:
    """An argparse type: a number with ``lo <= x <= hi`` (``lo`` excluded when it is 0)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number: give {what}") from None
        if not (lo < value if lo == 0 else lo <= value) or not value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
        return value

    return parse


def _max_rows(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < MIN_MAX_ROWS:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {MIN_MAX_ROWS}")
    return value


_budget = _number(0.0, 0.5, "a share of readings in (0, 0.5], e.g. 1e-4 (1 in 10,000)")
_fraction = _number(0.05, 0.5, "between 0.05 and 0.5")
_latency_budget = _number(
    0.0, MAX_LATENCY_BUDGET_MS, f"a number of milliseconds in (0, {MAX_LATENCY_BUDGET_MS:g}]"
)


def add_train_parser(models_cmds: Any) -> argparse.ArgumentParser:
    """Add ``train`` to the ``models`` subcommands."""
    from cloud_hub.settings import OPTIONS  # noqa: PLC0415  (imports nothing heavy)

    p: argparse.ArgumentParser = models_cmds.add_parser(
        "train",
        help="train an edge (int8) and heavy (fp32) pair from recorded CSV and register it",
        description="Read recorded CSV (one series per file, or per --device-column value), "
        "split each series by time (the latest readings held out), train an edge model "
        "(int8) and a heavy model (fp32), gate the int8 model against its fp32 twin, write "
        "both packages to MODELS_DIR/NAME-{edge,heavy}/VERSION and register them in the store. "
        "With --label: classifiers over the label's values (--urgent names the urgent ones). "
        "Without: anomaly models trained on data you say is normal (all of it, or "
        "--normal-from/--normal-to), with the urgent threshold set by --false-alarm-budget. "
        "Files are streamed: at most --max-rows readings are kept, every k-th of each series. "
        "Prints a report, then one JSON line.",
    )
    p.add_argument(
        "--data",
        nargs="+",
        type=Path,
        required=True,
        metavar="FILE_OR_DIR",
        help="recorded CSV files, or directories of them",
    )
    p.add_argument(
        "--sensors",
        metavar="A,B,...",
        help="the sensor columns, in order (default: every numeric column but the timestamp, "
        "label and device columns)",
    )
    add_recording_options(p)
    p.add_argument("--label", metavar="COLUMN", help="the label column (supervised training)")
    p.add_argument(
        "--urgent",
        nargs="+",
        metavar="VALUE",
        help="with --label: the label values that are urgent",
    )
    p.add_argument(
        "--normal",
        metavar="VALUE",
        help="with --label: the normal label value (default: the most common non-urgent one)",
    )
    p.add_argument(
        "--normal-from",
        metavar="T",
        help="without --label: normal data starts at T (ISO or unix s)",
    )
    p.add_argument("--normal-to", metavar="T", help="without --label: normal data ends before T")
    p.add_argument("--name", help="model name (default: from the first file's name)")
    p.add_argument("--version", help="MAJOR.MINOR.PATCH (default: 1.0.0, or the next free one)")
    p.add_argument("--force", action="store_true", help="replace an existing --version")
    p.add_argument(
        "--false-alarm-budget",
        type=_budget,
        default=1e-4,
        metavar="X",
        help="without --label: false alarms allowed per normal reading (default: 1e-4)",
    )
    p.add_argument(
        "--units",
        type=_units,
        action=_MergePairs,
        default={},
        metavar="SENSOR=UNIT,...",
        help="a comma list, or repeat the option; each sensor once (default: none)",
    )
    p.add_argument(
        "--valid-range",
        type=_ranges,
        action=_MergePairs,
        default={},
        metavar="SENSOR=LO:HI,...",
        help="the sensor's physical range: a value beyond it is a broken sensor (missing) and "
        "never raises an urgent event. A comma list, or repeat the option; each sensor once "
        "(default: the data's range widened by 10 spans each side, "
        "not below 0 when no value is negative; the report warns)",
    )
    p.add_argument("--window", type=positive_int, default=None, metavar="N", help="(default: 10)")
    p.add_argument(
        "--consecutive",
        type=_rule_readings,
        default=None,
        metavar="N",
        help="readings over the threshold in a row before an urgent event (default: "
        f"{DEFAULT_CONSECUTIVE['anomaly']} without --label, "
        f"{DEFAULT_CONSECUTIVE['classifier']} with it)",
    )
    p.add_argument(
        "--release",
        type=_rule_readings,
        default=DEFAULT_RELEASE,
        metavar="N",
        help="readings under the threshold in a row that end an urgent episode, so a score "
        f"hovering at the threshold gives one event (default: {DEFAULT_RELEASE})",
    )
    p.add_argument(
        "--hard-limit",
        type=_hard_limit,
        action="append",
        default=[],
        metavar="SENSOR=LO:HI",
        help="an urgent event when a sensor's raw value is below LO or above HI, whatever the "
        "score (LO: or :HI for one side; repeat for more sensors). It must lie inside the "
        "sensor's valid range, beyond which values are dropped as invalid (default: none)",
    )
    p.add_argument(
        "--validation-fraction",
        type=_fraction,
        default=0.2,
        metavar="X",
        help="of each series, the share before the holdout on which thresholds are chosen "
        "(0.05-0.5, default: 0.2)",
    )
    p.add_argument(
        "--holdout-fraction",
        type=_fraction,
        default=0.2,
        metavar="X",
        help="of each series, the latest share on which the metrics are measured "
        "(0.05-0.5, default: 0.2)",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        metavar="X",
        help="the int8 edge model must agree with its fp32 twin on at least this share of "
        "the holdout's classes, or nothing is published (default: 0.99)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=7,
        metavar="N",
        help="the random seed: the same data and seed give the same models (default: 7)",
    )
    p.add_argument(
        "--max-rows",
        type=_max_rows,
        default=DEFAULT_MAX_ROWS,
        metavar="N",
        help="keep at most N readings for training, every k-th of each series in time order "
        "(k doubles as needed); every reading is still read and goes through the feature "
        f"window, and memory stays bounded (default: {DEFAULT_MAX_ROWS:,})",
    )
    p.add_argument(
        "--latency-budget-ms",
        type=_latency_budget,
        default=DEFAULT_LATENCY_BUDGET_MS,
        metavar="MS",
        help="written into both manifests as latency_budget_ms: the hub shows a device "
        "running the model as degraded when its latency p99 per reading is over this "
        f"(default: {DEFAULT_LATENCY_BUDGET_MS:g})",
    )
    OPTIONS.add_to(p, only=TRAIN_OPTIONS)
    p.set_defaults(handler=_train, parser=p)
    return p


@contextmanager
def _bar(desc: str, total: int | None, unit: str) -> Iterator[Any]:
    """A tqdm bar on stderr when it is a terminal (else nothing is drawn)."""
    from tqdm import tqdm  # noqa: PLC0415

    size = shutil.get_terminal_size()  # 80x24 where a pty reports none: still a bar
    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "rows",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        ncols=size.columns,
        nrows=size.lines,
    )
    try:
        yield bar
    finally:
        bar.close()


def _fail(message: str) -> Exception:
    from cloud_hub.pipeline.train import PipelineError  # noqa: PLC0415

    return PipelineError(message)


def _timestamp(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    from shared.columns import parse_timestamp  # noqa: PLC0415

    try:
        return parse_timestamp(text)
    except ValueError:
        raise _fail(f"{flag} {text!r} is neither an ISO 8601 time nor unix seconds") from None


def _versions(settings: HubSettings, store: Any, names: Sequence[str]) -> set[str]:
    from shared.manifest import parse_version  # noqa: PLC0415

    found: set[str] = set()
    for name in names:
        d = settings.models_dir / name
        if d.is_dir():
            for child in d.iterdir():
                try:
                    parse_version(child.name)
                except ValueError:
                    continue
                found.add(child.name)
    found.update(r.version for r in store.models() if r.name in names)
    return found


def _choose_version(
    requested: str | None, existing: set[str], force: bool, base: str
) -> tuple[str, str]:
    from shared.manifest import parse_version  # noqa: PLC0415

    keys = sorted(parse_version(v) for v in existing)
    nxt = f"{keys[-1][0]}.{keys[-1][1] + 1}.0" if keys else "1.0.0"
    if requested is not None:
        parse_version(requested)
        if requested in existing and not force:
            raise _fail(
                f"{base} {requested} already exists (in the models directory or the store); "
                f"versions are immutable: give --version {nxt}, leave --version out (the next "
                "free one is taken), or replace it on purpose with --force"
            )
        return requested, (
            f"version {requested} (replacing the existing one: --force)"
            if requested in existing
            else f"version {requested}"
        )
    if not keys:
        return nxt, f"version {nxt} (the first of {base})"
    shown = ", ".join(".".join(map(str, k)) for k in keys[-3:])
    return nxt, f"version {nxt}: the next free one ({base} has {shown})"


def _train(args: argparse.Namespace) -> int:
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # noqa: PLC0415

    from cloud_hub.keys import signing_key_for  # noqa: PLC0415
    from cloud_hub.settings import resolve_settings  # noqa: PLC0415
    from cloud_hub.store import open_store  # noqa: PLC0415

    if args.label is None and (args.urgent or args.normal):
        args.parser.error("--urgent and --normal go with --label COLUMN")
    if args.label is not None and not args.urgent:
        args.parser.error(
            "--label needs --urgent VALUE...: the label values that are urgent (e.g. --urgent "
            "fault alarm)"
        )
    if args.label is not None and (args.normal_from or args.normal_to):
        args.parser.error(
            "--normal-from/--normal-to select normal data for training without --label"
        )
    settings = resolve_settings(args, serving=False)
    signing_key_for(settings.signing_key, settings.data_dir)  # a bad key fails before training
    t0 = time.perf_counter()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.store)
    try:
        with threadpool_limits(limits=1):
            result, report = _run(args, settings, store, t0)
    finally:
        store.close()
    for line in report:
        print(line)
    print(json.dumps(result, sort_keys=True))
    return 0


def _run(
    args: argparse.Namespace, settings: HubSettings, store: Any, t0: float
) -> tuple[dict[str, Any], list[str]]:
    from cloud_hub.pipeline import recorded  # noqa: PLC0415
    from cloud_hub.recording_options import csv_options  # noqa: PLC0415
    from cloud_hub.recordings import find_recordings  # noqa: PLC0415
    from shared.features import DEFAULT_WINDOW  # noqa: PLC0415

    options = csv_options(args, label_column=args.label)
    paths = find_recordings(args.data)
    report: list[str] = []
    if args.sensors:
        names = [s.strip() for s in args.sensors.split(",") if s.strip()]
    else:
        names, skipped = recorded.numeric_sensors(paths[0], options)
        report.append(
            f"sensors: every numeric column of {paths[0].name}: {', '.join(names)}"
            + (f" (not numeric, left out: {', '.join(skipped)})" if skipped else "")
        )
    base = args.name or recorded.derive_name(paths[0])
    edge_name, heavy_name = f"{base}-edge", f"{base}-heavy"
    if args.name is not None and not recorded.MODEL_NAME_RE.fullmatch(base):
        raise _fail(
            f"--name {args.name!r}: a model name is 1-58 of a-z 0-9 _ . - (lowercase, "
            "starting with a letter or digit)"
        )
    version, version_note = _choose_version(
        args.version, _versions(settings, store, (edge_name, heavy_name)), args.force, base
    )
    window = args.window or DEFAULT_WINDOW
    streamed = _read(args, paths, options, names, window=window, fallback=[0.0] * len(names))
    label_hint = ""
    for path in paths:
        rec_unused = _unused_columns(path, options, names)
        if rec_unused:
            report.append(f"{path.name}: columns not used: {', '.join(rec_unused)}")
        labelled = [c for c in rec_unused if c.lower() in _LABEL_LIKE]
        if args.label is None and labelled and not label_hint:
            label_hint = (
                f"{path.name} has a column {labelled[0]!r}: if it labels the readings, "
                f"train classifiers on it with --label {labelled[0]} --urgent VALUE..."
            )
            report.append(f"hint: {label_hint}")
    report.insert(
        0,
        f"data: {len(paths)} file(s), {len(streamed.sources)} series, {streamed.rows_read} rows",
    )
    if args.label is None:
        _check_normal_range(streamed, args)
        if args.normal_from is not None or args.normal_to is not None:
            report.append(
                f"normal range: [{args.normal_from or 'start'}, {args.normal_to or 'end'}) "
                f"(--normal-from/--normal-to): {streamed.total_rows} of {streamed.rows_read} "
                f"readings inside, {streamed.rows_read - streamed.total_rows} left out"
            )
    sensors, notes = recorded.infer_sensors(
        names, streamed, units=args.units, valid_ranges=args.valid_range
    )
    report += notes
    if streamed.fallback_used:
        # A series starts with a missing value: its first features hold the fallback
        # values, which are known only now (the medians).
        report.append(
            "a series starts with a missing value: read again, with the fallback values "
            "(medians) its first features carry"
        )
        streamed = _read(
            args, paths, options, names, window=window, fallback=[s.fallback for s in sensors]
        )
    report.append(_kept_note(streamed, args.max_rows))
    hard_limits = _hard_limits(args.hard_limit, sensors)
    hashes = recorded.files_sha256(paths)
    data_hash = _combined_hash(hashes)
    data_window = "recorded CSV: " + ", ".join(f"{p} sha256={h}" for p, h in hashes.items())
    if args.normal_from or args.normal_to:
        data_window += f"; normal from {args.normal_from or 'start'} to {args.normal_to or 'end'}"
    from cloud_hub.pipeline.trainer import PairSpec  # noqa: PLC0415

    common = {
        "edge_name": edge_name,
        "heavy_name": heavy_name,
        "version": version,
        "sensors": sensors,
        "window": window,
        "data_window": data_window,
        "data_hash": data_hash,
        "consecutive": args.consecutive
        or DEFAULT_CONSECUTIVE["anomaly" if args.label is None else "classifier"],
        "release": args.release,
        "hard_limits": hard_limits,
        "min_agreement": args.min_agreement,
        "seed": args.seed,
        "run_prefix": "train",
        "latency_budget_ms": args.latency_budget_ms,
    }
    steps = ["train", "convert", "gate", "score", "package", "publish"]
    with _bar("training", len(steps), "step") as bar:

        def progress(step: str) -> None:
            bar.set_postfix_str(step)
            if step != "train":
                bar.update(1)

        if args.label is not None:
            classes, urgent_class, normal_class, split, split_note = _labelled(
                args, streamed, window
            )
            spec = PairSpec(
                classes=classes, urgent_class=urgent_class, normal_class=normal_class, **common
            )
            from cloud_hub.pipeline.train import RARE_CLASS_HEAVY  # noqa: PLC0415
            from cloud_hub.pipeline.trainer import train_classifier_pair  # noqa: PLC0415

            result = train_classifier_pair(
                settings.models_dir,
                spec,
                split,
                heavy_config=RARE_CLASS_HEAVY,
                require_urgent_recall=True,
                progress=progress,
                t0=t0,
            )
        else:
            split, anomalies, split_note = _unlabelled(args, streamed, window, sensors)
            spec = PairSpec(
                classes=("normal", "urgent"), urgent_class="urgent", normal_class="normal", **common
            )
            from cloud_hub.pipeline.convert import GateError  # noqa: PLC0415
            from cloud_hub.pipeline.trainer import train_anomaly_pair  # noqa: PLC0415

            try:
                result = train_anomaly_pair(
                    settings.models_dir,
                    spec,
                    split,
                    anomalies,
                    budget=args.false_alarm_budget,
                    progress=progress,
                    t0=t0,
                )
            except GateError as exc:
                if not label_hint:
                    raise
                raise GateError(
                    f"{exc} ({label_hint})",
                    gate=exc.gate,
                    measured=exc.measured,
                    threshold=exc.threshold,
                ) from None
        bar.update(1)
    report.append(split_note)
    report.append(f"{base}: {version_note}")
    report += _describe(result)
    report.append(_rule_line(result))
    if args.label is None:
        n_val = int(result.metrics["edge"]["validation_rows"])
        if n_val * args.false_alarm_budget < 1:
            report.append(
                f"note: {n_val} validation rows resolve a false-alarm rate down to 1/{n_val} "
                f"only, above the budget {args.false_alarm_budget:g}: the threshold extrapolates "
                "the tail of the scores; more normal data measures it directly"
            )
    from cloud_hub.keys import sign_packages  # noqa: PLC0415

    report += sign_packages(settings.signing_key, settings.data_dir, [result.edge, result.heavy])
    report += _register(settings, store, result, replace=args.force)
    out = result.to_dict()
    out.update(
        {
            "name": base,
            "data_files": hashes,
            "store": _safe_store(settings.store),
            "rows_read": streamed.rows_read,
            "rows_kept": streamed.sample.size,
            "keep_every": streamed.sample.k,
        }
    )
    return out, report


def _hard_limits(
    given: Sequence[tuple[str, float | None, float | None]], sensors: Sequence[SensorSpec]
) -> dict[str, tuple[float | None, float | None]]:
    """``--hard-limit`` values checked against the model's sensors: a declared sensor,
    once, and inside its valid range (the agent drops values beyond that range as
    invalid before the rule sees them, so a limit outside it could never fire)."""
    by_name = {s.name: s for s in sensors}
    out: dict[str, tuple[float | None, float | None]] = {}
    for name, lo, hi in given:
        shown = f"--hard-limit {name}={_side(lo)}:{_side(hi)}"
        spec = by_name.get(name)
        if spec is None:
            raise _fail(
                f"{shown}: the model has no sensor {name!r}; its sensors are "
                f"{', '.join(by_name)} (name one of them, or add it with --sensors)"
            )
        if name in out:
            raise _fail(f"{shown}: {name} has a hard limit already; give one per sensor")
        if (lo is not None and lo <= spec.min) or (hi is not None and hi >= spec.max):
            raise _fail(
                f"{shown}: the limit must lie inside {name}'s valid range [{spec.min:g}, "
                f"{spec.max:g}]: the agent drops values beyond that range as invalid before the "
                f"rule sees them, so this limit could never fire; move it inside, or widen the "
                f"range with --valid-range {name}=LO:HI"
            )
        out[name] = (lo, hi)
    return out


def _side(bound: float | None) -> str:
    return "" if bound is None else f"{bound:g}"


def _rule_line(result: TrainResult) -> str:
    from shared.manifest import load_package  # noqa: PLC0415

    u = load_package(result.edge).manifest.urgent
    limits = [
        f"{name} < {lo:g}"
        if hi is None
        else f"{name} > {hi:g}"
        if lo is None
        else f"{name} < {lo:g} or > {hi:g}"
        for name, (lo, hi) in u.hard_limits.items()
    ]
    return (
        f"urgent rule (both models): an event after {u.consecutive} reading(s) in a row at or "
        f"over the threshold, the episode ending after {u.release} under it "
        f"(--consecutive, --release); hard limits: "
        + (", ".join(limits) if limits else "none (--hard-limit SENSOR=LO:HI)")
    )


def _safe_store(url: str) -> str:
    return url if url.startswith("sqlite:") else url.partition("://")[0] + "://..."


def _unused_columns(path: Path, options: Any, names: Sequence[str]) -> list[str]:
    from cloud_hub.recordings import Recording  # noqa: PLC0415

    return list(Recording.open(path, options, names).unused)


def _combined_hash(hashes: dict[str, str]) -> str:
    import hashlib  # noqa: PLC0415

    h = hashlib.sha256()
    for path, digest in hashes.items():
        h.update(f"{Path(path).name}\0{digest}\n".encode())
    return h.hexdigest()


def _read(
    args: argparse.Namespace,
    paths: Sequence[Path],
    options: Any,
    names: Sequence[str],
    *,
    window: int,
    fallback: Sequence[float],
) -> Streamed:
    """Stream the files into a bounded sample (see :func:`.recorded.stream_sample`),
    with a progress bar, and say on stderr when the cap starts thinning the rows."""
    from cloud_hub.pipeline import recorded  # noqa: PLC0415
    from cloud_hub.recordings import estimate_rows  # noqa: PLC0415

    estimate = estimate_rows(paths)
    time_range: tuple[float | None, float | None] = (None, None)
    if args.label is None:
        time_range = (
            _timestamp(args.normal_from, "--normal-from"),
            _timestamp(args.normal_to, "--normal-to"),
        )
    with _bar("reading", estimate, "rows") as bar:

        def thinned(k: int, path: Path) -> None:
            if k == 2:
                expect = 1 << max(1, math.ceil(math.log2(max(estimate, 1) / args.max_rows)))
                bar.write(
                    f"note: {path.name}: over --max-rows {args.max_rows} rows in all; training "
                    f"keeps every 2nd reading of each series from here on, and halves again "
                    f"as needed (the files hold about {estimate} rows: expect every "
                    f"{expect}th). Every reading still goes through the feature window; "
                    "memory stays bounded. A larger --max-rows keeps more.",
                    file=sys.stderr,
                )

        streamed = recorded.stream_sample(
            paths,
            options,
            names,
            window=window,
            fallback=fallback,
            max_rows=args.max_rows,
            stretch=0 if args.label is not None else 4 * window,
            time_range=time_range,
            on_rows=bar.update,
            on_thin=thinned,
        )
        bar.total = streamed.rows_read  # the estimate, made right
        bar.refresh()
    return streamed


def _nth(k: int) -> str:
    """``2nd``, ``16th``, ``32nd``."""
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th") if k % 100 not in (11, 12, 13) else "th"
    return f"{k}{suffix}"


def _kept_note(streamed: Streamed, max_rows: int) -> str:
    sample = streamed.sample
    total = streamed.total_rows
    if sample.k == 1:
        return f"kept for training: all {total} readings (--max-rows {max_rows})"
    return (
        f"kept for training: {sample.size} of {total} readings, every {_nth(sample.k)} of each "
        f"series in time order (--max-rows {max_rows} bounds memory; the features of every "
        "reading were computed, the window running across chunks); the reference statistics, "
        "medians and thresholds come from the kept rows, the valid ranges from every reading"
    )


def _check_normal_range(streamed: Streamed, args: argparse.Namespace) -> None:
    if args.normal_from is None and args.normal_to is None:
        return
    total = streamed.total_rows
    if total < _MIN_TRAIN_ROWS + 2 * _MIN_SLICE_ROWS:
        per = ", ".join(
            f"{s}: {n}" for s, n in zip(streamed.sources, streamed.rows, strict=True)
        ) or ", ".join(str(p) for p in args.data)
        raise _fail(
            f"the normal range [{args.normal_from or 'start'}, {args.normal_to or 'end'}) holds "
            f"{total} readings ({per}); training without labels needs at least "
            f"{_MIN_TRAIN_ROWS + 2 * _MIN_SLICE_ROWS} (train, validation and holdout slices): "
            "widen --normal-from/--normal-to or give more recordings"
        )


def _split_note(args: argparse.Namespace, counts: dict[str, int], window: int) -> str:
    return (
        f"split by time: train {counts['train']}, validation {counts['validation']}, holdout "
        f"{counts['holdout']} rows (of each series the last {args.holdout_fraction:.0%} held out, "
        f"the {args.validation_fraction:.0%} before it for thresholds; the rows in the "
        f"{window - 1} readings after each cut dropped, whose window reaches across it)"
    )


def _labelled(
    args: argparse.Namespace, streamed: Streamed, window: int
) -> tuple[tuple[str, ...], str, str, Any, str]:
    from cloud_hub.pipeline.recorded import split_sample  # noqa: PLC0415
    from cloud_hub.pipeline.trainer import Split  # noqa: PLC0415

    where = f"column {args.label!r} of {', '.join(sorted({str(p) for p in streamed.paths}))}"
    counts = streamed.label_counts
    if "" in counts:
        raise _fail(
            f"{where} has {counts['']} empty label cell(s); give every row a label (or leave "
            "--label out to train on normal data without labels)"
        )
    if len(counts) < 2:
        raise _fail(
            f"{where} holds one class only ({next(iter(counts))!r}); a classifier needs at "
            "least two: label the other rows, or train without --label on normal data"
        )
    urgent_values = list(dict.fromkeys(args.urgent))
    missing = [v for v in urgent_values if v not in counts]
    if missing:
        raise _fail(
            f"{where} never holds the urgent value {missing[0]!r}; its values are "
            f"{dict(counts.most_common(10))}: name the urgent ones with --urgent"
        )
    rest = [v for v, _ in counts.most_common() if v not in urgent_values]
    if not rest:
        raise _fail(
            f"{where} holds only urgent values ({', '.join(urgent_values)}): a classifier "
            "needs normal rows too; label them, or train without --label on normal data"
        )
    normal = args.normal or rest[0]
    if normal not in rest:
        raise _fail(f"--normal {normal!r} is not a non-urgent value of {where}: {rest}")
    urgent_class = urgent_values[0] if len(urgent_values) == 1 else "urgent"
    if urgent_class in rest:
        urgent_class = "urgent!"
    others = sorted(v for v in rest if v != normal)
    classes = (normal, *others, urgent_class)
    index = {v: classes.index(v) for v in rest}
    index.update({v: len(classes) - 1 for v in urgent_values})
    sample = streamed.sample
    lut = np.array([index[v] for v in streamed.label_names], dtype=np.int64)
    codes = lut[sample.labels]
    side, _ = split_sample(streamed, window, args.validation_fraction, args.holdout_fraction)
    x = {k: sample.features[side == k] for k in (0, 1, 2)}
    y = {k: codes[side == k] for k in (0, 1, 2)}
    part = {0: "train", 1: "validation", 2: "holdout"}
    sizes = {part[k]: int(y[k].size) for k in part}
    thinned = (
        f"; every {_nth(sample.k)} reading kept (--max-rows {args.max_rows}): a larger --max-rows "
        "keeps more of a short class"
        if sample.k > 1
        else ""
    )
    for k, what in part.items():
        have = np.bincount(y[k], minlength=len(classes))
        lacking = [classes[i] for i in range(len(classes)) if have[i] == 0]
        if y[k].size < _MIN_SLICE_ROWS or lacking:
            raise _fail(
                f"the {what} slice (by time: {sizes}) "
                + (f"has no row of class {lacking[0]!r}" if lacking else "has too few rows")
                + f" ({where}; rows per class: {dict(zip(classes, have.tolist(), strict=True))}"
                + f"{thinned}); every class is needed in every slice: record longer, give more "
                "files, or move the cut with --holdout-fraction/--validation-fraction"
            )
    split = Split(x[0], y[0], x[1], y[1], x[2], y[2])
    return classes, urgent_class, normal, split, _split_note(args, sizes, window)


def _unlabelled(
    args: argparse.Namespace,
    streamed: Streamed,
    window: int,
    sensors: tuple[SensorSpec, ...],
) -> tuple[Any, Any, str]:
    from cloud_hub.pipeline import recorded  # noqa: PLC0415
    from cloud_hub.pipeline.trainer import Split  # noqa: PLC0415

    sample = streamed.sample
    side, cuts = recorded.split_sample(
        streamed, window, args.validation_fraction, args.holdout_fraction
    )
    x = {k: sample.features[side == k] for k in (0, 1, 2)}
    sizes = {"train": len(x[0]), "validation": len(x[1]), "holdout": len(x[2])}
    if len(x[0]) < _MIN_TRAIN_ROWS or min(len(x[1]), len(x[2])) < _MIN_SLICE_ROWS:
        raise _fail(
            f"the normal data ({', '.join(streamed.sources)}) gives too few rows by "
            f"time: {sizes}; training without labels needs >= {_MIN_TRAIN_ROWS} train and "
            f">= {_MIN_SLICE_ROWS} validation and holdout rows: give more recordings or a wider "
            "--normal-from/--normal-to"
        )
    scale = recorded.robust_scale(sample.values[side == 0])
    # Stretches of consecutive readings: each (re)start of an agent makes window - 1
    # rows of a half-filled window, normal (one restart per STARTUP_EVERY readings
    # kept); in the holdout's, synthetic faults, one per stretch, sensors in turn.
    starts: dict[int, list[Any]] = {0: [], 1: []}
    anomalies: list[Any] = []
    restart_every = max(1, round(recorded.STARTUP_EVERY / sample.every))
    for stretch in sample.stretches:
        where = recorded.stretch_side(stretch, cuts)
        if where in starts and (stretch.start // (sample.k * sample.every)) % restart_every == 0:
            starts[where].append(recorded.startup_rows(stretch.values, window, sensors))
        elif where == 2:
            faulty_values, faulty = recorded.inject_faults(
                stretch.values, scale, sensors, window, first=len(anomalies)
            )
            if faulty.any():
                anomalies.append(recorded.feature_rows(faulty_values, window, sensors)[faulty])
    for k in (0, 1):
        x[k] = np.concatenate([x[k], *starts[k]])
    added = {"train": len(x[0]) - sizes["train"], "validation": len(x[1]) - sizes["validation"]}
    if not anomalies:
        raise _fail(
            f"the holdout slices ({sizes['holdout']} rows) are too short for synthetic faults "
            f"({4 * window} readings in a row, starting every {sample.k * sample.every}th "
            "reading): give more data or a larger --holdout-fraction"
        )
    split = Split(
        x[0],
        np.zeros(len(x[0]), np.int64),
        x[1],
        np.zeros(len(x[1]), np.int64),
        x[2],
        np.zeros(len(x[2]), np.int64),
        holdout_series=sample.series[side == 2].astype(np.int64),
    )
    note = _split_note(args, sizes, window) + (
        f"; plus start-up rows (an agent's first {window - 1} readings, half-filled windows) "
        f"made from them: train +{added['train']} = {len(x[0])}, validation "
        f"+{added['validation']} = {len(x[1])}"
    )
    return split, np.concatenate(anomalies), note


def _register(
    settings: HubSettings, store: Any, result: TrainResult, *, replace: bool
) -> list[str]:
    from cloud_hub.registry.register import register_built  # noqa: PLC0415
    from shared.manifest import load_package  # noqa: PLC0415

    run = load_package(result.edge).manifest.lineage.pipeline_run
    done = register_built(
        store,
        settings.data_dir,
        settings.signing_key,
        [result.edge, result.heavy],
        by=f"train:{run}",
        replace=replace,
    )
    return [f"{d.describe()} in {_safe_store(settings.store)}" for d in done]


def _describe(result: TrainResult) -> list[str]:
    from shared.manifest import load_package  # noqa: PLC0415

    lines = []
    details = result.details
    for variant, path in (("edge", result.edge), ("heavy", result.heavy)):
        m = load_package(path).manifest
        figures = " ".join(f"{k}={m.metrics[k]:.4g}" for k in _SHOWN if k in m.metrics)
        lines.append(
            f"{m.name} {m.version} {path} {m.model.quantization} {m.model.size} bytes "
            f"urgent_threshold={m.urgent.score_threshold:.4g} {figures}"
        )
        if details.get("kind") == "anomaly":
            t = details["thresholds"][variant]
            holdout = int(m.metrics["holdout_rows"])
            lines.append(
                f"  raw threshold {t['raw_threshold']:.4g} (score units), published as "
                f"{t['threshold']:.4g} (the 0-1 urgent score raw / (raw + {t['raw_scale']:.4g})): "
                f"{t['why']}; on held-out normal data: "
                f"{t['holdout_false_alarms']} false alarm(s) in {holdout} readings "
                f"(rate {m.metrics['false_alarm_rate']:.2g}, budget "
                f"{m.metrics['false_alarm_budget']:.2g}, consecutive={m.urgent.consecutive}, "
                f"release={m.urgent.release}); "
                f"synthetic faults found: {m.metrics['synthetic_anomaly_recall']:.1%}"
            )
            if m.metrics["synthetic_anomaly_recall"] < _WARN_SYNTHETIC_RECALL:
                lines.append(
                    f"  warning: {m.name} finds only "
                    f"{m.metrics['synthetic_anomaly_recall']:.1%} of the synthetic faults "
                    f"(a clean normal stretch gives >= 90%): the training data may hold faults; "
                    "pick a clean stretch with --normal-from/--normal-to, or use --label"
                )
        elif details:
            lines.append(
                f"  threshold {m.urgent.score_threshold:.2f}: {details['threshold_reason']}"
            )
        confusion = details.get("confusion", {}).get(variant)
        if confusion:
            cols = list(next(iter(confusion.values())))
            lines.append(
                "  confusion (rows: true, columns: predicted = the arg-max class; the urgent "
                "figures and alarms above use the threshold rule instead): " + " | ".join(cols)
            )
            for true, row in confusion.items():
                lines.append(f"    {true}: " + " ".join(str(row[c]) for c in cols))
    return lines
