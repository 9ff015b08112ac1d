"""``edgeloop-sim bench urgent``: urgent events per fault episode for settings of
``consecutive`` and ``release``, on models that ``models train`` made.

The generated test rig (:mod:`simulators.rig`): ``models train`` makes an
unsupervised pair (normal readings only) and a labelled pair (``alarm`` and
``warn`` windows), each with ``--consecutive 1 --release 1`` (the rule does not
change what is trained; 1 and 1 make the false-alarm gate the strictest). A
second recording, of another seed, carries ``--episodes`` alarm faults of random
length (``--min-length`` to ``--max-length`` readings), each ramping up and down
over ``--ramp`` readings, at a random share of the full alarm (vibration +0.25 g,
temperature +9 degC) between ``--min-size`` and 1: the small ones put the score
near the threshold, where it flickers. Each edge (int8) model scores that
recording as the agent does (the agent's feature window, one reading per call);
then, for each setting, :class:`shared.urgent.UrgentRule` (what the agent and
batch scoring run) gives the events.

An event belongs to an episode when it fires from the episode's first reading
to ``window`` readings after its last (the feature window still holds faulty
readings then); every other event is a false alarm, counted per 10,000 of the
readings outside those spans. Per setting: the share of episodes with at least
one event, events per detected episode (mean and max), the share of detected
episodes with more than one, the mean delay from an episode's start to its
first event, and false alarms per 10,000 normal readings. The setting
``consecutive`` = 1, ``release`` = 1 (the rule before ``release``) is the
baseline, run in the same invocation. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.options import positive_int

HELP = "urgent events per fault episode for settings of --consecutive and --release"

F64 = npt.NDArray[np.float64]


def _settings(text: str) -> list[tuple[int, int]]:
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        c, sep, r = item.partition(":")
        try:
            pair = (int(c), int(r))
        except ValueError:
            pair = (0, 0)
        if not sep or min(pair) < 1:
            raise argparse.ArgumentTypeError(
                f"--settings: {item!r} is not CONSECUTIVE:RELEASE with both >= 1 (e.g. 2:5)"
            )
        out.append(pair)
    if (1, 1) not in out:
        out.insert(0, (1, 1))  # the baseline
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--train-readings", type=positive_int, default=6000)
    parser.add_argument("--test-readings", type=positive_int, default=100_000)
    parser.add_argument("--episodes", type=positive_int, default=200)
    parser.add_argument("--min-length", type=positive_int, default=20)
    parser.add_argument("--max-length", type=positive_int, default=120)
    parser.add_argument("--ramp", type=positive_int, default=10)
    parser.add_argument("--min-size", type=float, default=0.15)
    parser.add_argument(
        "--settings",
        type=_settings,
        default=_settings("1:5,1:10,1:20,2:1,2:5,2:10,2:20,3:10"),
        metavar="C:R,...",
        help="consecutive:release pairs to measure (1:1, the baseline, is always run)",
    )


def fault_recording(
    args: argparse.Namespace,
) -> tuple[F64, list[tuple[int, int, float]]]:
    """Normal readings with ``args.episodes`` alarm faults; ``(start, end, size)`` of each."""
    from simulators.rig import ALARM_SHIFT, rig_values  # noqa: PLC0415

    rng = np.random.default_rng(args.seed + 1000)
    values = rig_values(args.test_readings, args.seed + 100)
    slot = args.test_readings // args.episodes
    if slot < args.max_length + 2 * args.ramp + 50:
        raise ValueError(
            f"--test-readings {args.test_readings} is too short for {args.episodes} episodes of "
            f"up to {args.max_length} readings with normal readings between them"
        )
    episodes = []
    for k in range(args.episodes):
        length = int(rng.integers(args.min_length, args.max_length + 1))
        start = k * slot + int(rng.integers(20, slot - length - 20))
        size = float(rng.uniform(args.min_size, 1.0))
        t = np.arange(length, dtype=np.float64)
        ramp = np.minimum(1.0, np.minimum(t + 1, length - t) / max(1, args.ramp))
        values[start : start + length] += size * ramp[:, None] * ALARM_SHIFT
        episodes.append((start, start + length, size))
    return values, episodes


def _train(work: Path, csv: Path, name: str, extra: list[str]) -> Path:
    """``models train`` in-process; the edge package's path."""
    from cloud_hub.cli import main  # noqa: PLC0415

    argv = [
        "models",
        "train",
        "--data",
        str(csv),
        "--ts-column",
        "datetime",
        "--name",
        name,
        "--consecutive",
        "1",
        "--release",
        "1",
        "--data-dir",
        str(work / "hub"),
        "--models-dir",
        str(work / "models"),
        *extra,
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    if code != 0:
        raise ValueError(f"models train {name} failed (exit {code}): {out.getvalue()[-2000:]}")
    return Path(json.loads(out.getvalue().splitlines()[-1])["edge"])


def measure(
    fired: npt.NDArray[np.bool_], episodes: list[tuple[int, int, float]], window: int
) -> dict[str, float]:
    """The figures of one setting from its events (see the module docstring)."""
    n = fired.size
    inside = np.zeros(n, dtype=bool)
    per_episode, delays = [], []
    for start, end, _ in episodes:
        span = slice(start, min(n, end + window))
        inside[span] = True
        hits = np.flatnonzero(fired[span])
        per_episode.append(hits.size)
        if hits.size:
            delays.append(int(hits[0]))
    counts = np.array(per_episode)
    detected = counts[counts > 0]
    normal = int((~inside).sum())
    return {
        "detected_share": round(float(detected.size / counts.size), 3),
        "events_per_detected_episode": round(float(detected.mean()), 3) if detected.size else 0.0,
        "max_events_per_episode": int(counts.max()),
        "multi_event_share": round(float(np.mean(detected > 1)), 3) if detected.size else 0.0,
        "mean_delay_readings": round(float(np.mean(delays)), 2) if delays else -1.0,
        "false_alarms_per_10k": round(float(fired[~inside].sum()) / normal * 1e4, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cloud_hub.inference import OnnxScorer  # noqa: PLC0415
    from shared.features import features_for_stream  # noqa: PLC0415
    from shared.manifest import UrgentSpec, load_package  # noqa: PLC0415
    from shared.urgent import UrgentRule  # noqa: PLC0415
    from simulators.rig import apply_labels, labels_for, rig_values, write_rig_csv  # noqa: PLC0415

    values, episodes = fault_recording(args)
    out: dict[str, Any] = {
        "bench": "urgent",
        "seed": args.seed,
        "test_readings": args.test_readings,
        "episodes": len(episodes),
        "episode_readings": sum(e - s for s, e, _ in episodes),
        "settings": [f"{c}:{r}" for c, r in args.settings],
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-urgent-") as tmp:
        work = Path(tmp)
        n = args.train_readings
        normal_csv = write_rig_csv(work / "normal.csv", rig_values(n, args.seed))
        labels = labels_for(n)
        labelled_csv = write_rig_csv(
            work / "labelled.csv", apply_labels(rig_values(n, args.seed + 1), labels), labels
        )
        edges = {
            "unsupervised": _train(work, normal_csv, "rig-normal", []),
            "labelled": _train(
                work, labelled_csv, "rig-labelled", ["--label", "state", "--urgent", "alarm"]
            ),
        }
        for kind, path in edges.items():
            package = load_package(path)
            m = package.manifest
            x = features_for_stream(values, m.input.window, m.input.fallback)
            scores = OnnxScorer.from_package(package).scores(x, batch_size=1)
            urgent = scores[:, m.output.urgent_index]
            figures: dict[str, Any] = {"threshold": round(m.urgent.score_threshold, 4)}
            for c, r in args.settings:
                spec = UrgentSpec(m.urgent.score_threshold, c, {}, r)
                rule = UrgentRule(spec, m.output.urgent_index, m.input.sensor_names)
                fired = rule.check_block(values, urgent)
                figures[f"{c}:{r}"] = measure(fired, episodes, m.input.window)
                print(kind, f"consecutive={c} release={r}", figures[f"{c}:{r}"], flush=True)
            out["models"][kind] = figures
    return out
