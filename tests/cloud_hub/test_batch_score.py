"""``edgeloop-hub batch score``: every row kept in order with its ts and device,
predictions equal to the model called directly, ``urgent`` equal to UrgentRule
over each device's series, streamed in chunks, and clear errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub import recordings
from cloud_hub.batch.files import score_files
from cloud_hub.cli import main
from cloud_hub.inference import OnnxScorer
from cloud_hub.pipeline.build import DEFAULT_VERSION
from cloud_hub.recordings import CsvOptions
from shared.features import FeatureWindow, InputCheck
from shared.manifest import ModelPackage, load_package, write_manifest
from shared.urgent import UrgentRule
from tests.conftest import ModelPaths

pytestmark = pytest.mark.timeout(60)

T0 = 1_763_719_200.0


def _recording(path: Path, package: ModelPackage, n: int, seed: int = 5) -> np.ndarray:
    """Two devices interleaved, with dropouts, bad cells and hard-limit crossings;
    returns the values as the reader sees them (NaN for empty or bad cells)."""
    m = package.manifest
    rng = np.random.default_rng(seed)
    fallback = np.array(m.input.fallback)
    x = fallback + rng.normal(0.0, 0.03, size=(n, fallback.size)) * np.abs(fallback)
    x[n // 3 : n // 3 + 30, 0] = 140.0  # temperature beyond its hard limit
    x[n // 2 : n // 2 + 40, 1] *= 9.0
    x[rng.random(x.shape) < 0.02] = np.nan
    cells = x.astype(object)
    cells[np.isnan(x)] = ""
    bad = rng.random(x.shape) < 0.01
    cells[bad] = "n/a"
    x[bad] = np.nan
    with path.open("w") as fh:
        fh.write("when;machine;" + ";".join(f"col_{s}" for s in m.input.sensor_names) + "\n")
        for i in range(n):
            row = ";".join(str(c) for c in cells[i])
            fh.write(f"{T0 + i // 2:.1f};{'ab'[i % 2]};{row}\n")
    return x


def _expected(package: ModelPackage, x: np.ndarray, devices: list[str]) -> dict[str, np.ndarray]:
    """What a device running ``package`` computes, reading by reading, per device."""
    m = package.manifest
    scorer = OnnxScorer.from_package(package)
    check = InputCheck(m.input.sensors, m.expected_ranges())
    windows: dict[str, FeatureWindow] = {}
    rules: dict[str, UrgentRule] = {}
    checked = np.stack([check.check(row.copy()) for row in x])
    feats = np.empty((len(x), len(m.input.features)), dtype=np.float32)
    for i, d in enumerate(devices):
        fw = windows.setdefault(d, FeatureWindow(m.input.window, m.input.fallback))
        feats[i] = fw.push(checked[i])
    row_by_row = m.model.quantization != "fp32"
    scores = scorer.scores(feats, batch_size=1 if row_by_row else None)
    u = scores[:, m.output.urgent_index]
    urgent = np.zeros(len(x), dtype=np.int64)
    for i, d in enumerate(devices):
        rule = rules.setdefault(
            d, UrgentRule(m.urgent, m.output.urgent_index, m.input.sensor_names)
        )
        urgent[i] = int(bool(rule.check(checked[i], float(u[i]))))
    return {"scores": scores, "urgent": urgent}


def _args(models: ModelPaths, tmp: Path, *extra: str) -> list[str]:
    return [
        "batch",
        "score",
        "--models-dir",
        str(models.heavy.parent.parent),
        "--data-dir",
        str(tmp / "hub"),
        *extra,
    ]


def _csv_map(package: ModelPackage) -> str:
    return ",".join(f"{s}=col_{s}" for s in package.manifest.input.sensor_names)


@pytest.mark.parametrize("variant", ["heavy", "edge"])
def test_every_row_in_order_with_the_model_and_the_rule_applied_per_device(
    tmp_path: Path,
    model_packages: ModelPaths,
    capsys: pytest.CaptureFixture[str],
    variant: str,
) -> None:
    package = load_package(getattr(model_packages, variant))
    m = package.manifest
    data = tmp_path / "rec.csv"
    n = 1500 if variant == "heavy" else 400
    x = _recording(data, package, n)
    out = tmp_path / "scored.csv"
    args = ["--model", m.name, "--input", str(data), "--output", str(out)]
    args += ["--device-column", "machine", "--ts-column", "when", "--chunk-rows", "97"]
    assert main(_args(model_packages, tmp_path, *args, "--csv-map", _csv_map(package))) == 0
    printed = capsys.readouterr().out.splitlines()
    summary = json.loads(printed[-1])
    devices = ["ab"[i % 2] for i in range(n)]
    want = _expected(package, x, devices)

    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["ts", "device", "predicted_class", "urgent_score", "urgent"]
    assert [float(r["ts"]) for r in rows] == [T0 + i // 2 for i in range(n)]
    assert [r["device"] for r in rows] == devices
    classes = [m.output.classes[i] for i in want["scores"].argmax(axis=1)]
    assert [r["predicted_class"] for r in rows] == classes
    np.testing.assert_allclose(
        [float(r["urgent_score"]) for r in rows],
        want["scores"][:, m.output.urgent_index],
        rtol=1e-5,
        atol=1e-7,
    )
    assert [int(r["urgent"]) for r in rows] == want["urgent"].tolist()
    assert want["urgent"].sum() >= 2  # the hard-limit crossings, at least
    assert summary["rows"] == n and summary["urgent_rows"] == int(want["urgent"].sum())
    assert summary["bad_cells"] > 0 and summary["series"] == 2
    assert summary["row_by_row"] is (variant == "edge")
    assert "urgent rows" in printed[-2] and "rows/s" in printed[-2]


def test_release_is_applied_as_the_agent_applies_it(
    tmp_path: Path, model_packages: ModelPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    # The heavy model with its threshold at the median score of the recording, so
    # the score crosses it again and again: release 3 merges the short dips.
    source = load_package(model_packages.heavy)
    data = tmp_path / "rec.csv"
    n = 900
    x = _recording(data, source, n)
    devices = ["ab"[i % 2] for i in range(n)]
    m = source.manifest
    u = _expected(source, x, devices)["scores"][:, m.output.urgent_index]
    urgent = dataclasses.replace(
        m.urgent, score_threshold=float(np.median(u)), consecutive=2, release=3
    )
    target = tmp_path / "models" / m.name / m.version
    shutil.copytree(model_packages.heavy, target)
    write_manifest(target, dataclasses.replace(m, urgent=urgent))
    package = load_package(target)
    want = _expected(package, x, devices)["urgent"]
    release_1 = dataclasses.replace(package.manifest, urgent=dataclasses.replace(urgent, release=1))
    once = _expected(
        ModelPackage(package.path, release_1, package.manifest_bytes, None), x, devices
    )["urgent"]
    assert 5 <= want.sum() < once.sum(), (want.sum(), once.sum())
    out = tmp_path / "scored.csv"
    args = ["batch", "score", "--models-dir", str(tmp_path / "models")]
    args += ["--data-dir", str(tmp_path / "hub"), "--model", m.name, "--input", str(data)]
    args += ["--output", str(out), "--device-column", "machine", "--ts-column", "when"]
    args += ["--chunk-rows", "61", "--csv-map", _csv_map(package)]
    assert main(args) == 0
    capsys.readouterr()
    with out.open() as fh:
        assert [int(r["urgent"]) for r in csv.DictReader(fh)] == want.tolist()


def test_jsonl_and_parquet_outputs_hold_the_same_rows(
    tmp_path: Path, model_packages: ModelPaths
) -> None:
    package = load_package(model_packages.heavy)
    data = tmp_path / "rec.csv"
    _recording(data, package, 300)
    # Scored as one series (no --device-column): a time for each row, in order.
    head, *rows = data.read_text().splitlines()
    rows = [f"{T0 + i / 2}{row[row.index(';') :]}" for i, row in enumerate(rows)]
    data.write_text("\n".join([head, *rows]) + "\n")
    base = ["--model", "machine-heavy@1.1.0", "--input", str(tmp_path), "--ts-column", "when"]
    base += ["--csv-map", _csv_map(package)]
    csv_out, jsonl_out = tmp_path / "o.csv.out", tmp_path / "o.jsonl"
    assert (
        main(_args(model_packages, tmp_path, *base, "--output", str(csv_out), "--format", "csv"))
        == 0
    )
    assert main(_args(model_packages, tmp_path, *base, "--output", str(jsonl_out))) == 0
    with csv_out.open() as fh:
        rows = list(csv.DictReader(fh))
    lines = [json.loads(x) for x in jsonl_out.read_text().splitlines()]
    assert len(rows) == len(lines) == 300
    assert [r["predicted_class"] for r in rows] == [x["predicted_class"] for x in lines]
    assert [int(r["urgent"]) for r in rows] == [x["urgent"] for x in lines]
    pq = pytest.importorskip("pyarrow.parquet")
    pq_out = tmp_path / "o.parquet"
    assert main(_args(model_packages, tmp_path, *base, "--output", str(pq_out))) == 0
    table = pq.read_table(pq_out).to_pydict()
    assert table["predicted_class"] == [x["predicted_class"] for x in lines]
    assert table["ts"] == [x["ts"] for x in lines]
    # Parquet in: the same rows give the same results.
    back = tmp_path / "back.jsonl"
    pa = pytest.importorskip("pyarrow")
    src = tmp_path / "in.parquet"
    with data.open() as fh:
        cols = list(csv.DictReader(fh, delimiter=";"))
    pq.write_table(
        pa.table(
            {
                "when": [float(c["when"]) for c in cols],
                **{
                    k: [float(c[k]) if c[k] not in ("", "n/a") else None for c in cols]
                    for k in cols[0]
                    if k.startswith("col_")
                },
            }
        ),
        src,
    )
    args = ["--model", "machine-heavy", "--input", str(src), "--output", str(back)]
    assert (
        main(
            _args(
                model_packages,
                tmp_path,
                *args,
                "--ts-column",
                "when",
                "--csv-map",
                _csv_map(package),
            )
        )
        == 0
    )
    again = [json.loads(x) for x in back.read_text().splitlines()]
    assert [x["predicted_class"] for x in again] == [x["predicted_class"] for x in lines]
    assert [x["urgent"] for x in again] == [x["urgent"] for x in lines]


def test_a_large_file_is_streamed_in_chunks(tmp_path: Path, model_packages: ModelPaths) -> None:
    package = load_package(model_packages.heavy)
    names = package.manifest.input.sensor_names
    n, chunk = 50_000, 4096
    data = tmp_path / "big.csv"
    rng = np.random.default_rng(1)
    x = np.array(package.manifest.input.fallback) + rng.normal(0, 0.1, size=(n, len(names)))
    body = np.column_stack([T0 + np.arange(n), x])
    np.savetxt(data, body, delimiter=",", header="ts," + ",".join(names), comments="", fmt="%.4f")
    sizes: list[int] = []
    out = tmp_path / "big.out.csv"
    summary = score_files(
        package, [data], out, "csv", CsvOptions(), chunk_rows=chunk, on_chunk=sizes.append
    )
    assert summary.rows == n and sum(sizes) == n
    assert len(sizes) == math.ceil(n / chunk) and max(sizes) == chunk
    with out.open() as fh:
        assert sum(1 for _ in fh) == n + 1


def test_errors_name_the_model_the_input_or_the_output(
    tmp_path: Path, model_packages: ModelPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "rec.csv"
    _recording(data, load_package(model_packages.heavy), 20)
    out = tmp_path / "o.csv"
    mapped = ["--ts-column", "when", "--csv-map", _csv_map(load_package(model_packages.heavy))]

    def error(model: str, source: Path, output: Path, *options: str) -> str:
        args = ["--model", model, "--input", str(source), "--output", str(output), *options]
        assert main(_args(model_packages, tmp_path, *args)) == 2
        return capsys.readouterr().err

    err = error("nope", data, out, *mapped)
    assert "'nope'" in err and "machine-edge" in err and "machine-heavy" in err
    assert DEFAULT_VERSION in error("machine-heavy@9.0.0", data, out, *mapped)
    missing = tmp_path / "missing.csv"
    assert str(missing) in error("machine-heavy", missing, out, *mapped)
    err = error("machine-heavy", data, out, "--ts-column", "when")
    assert "temperature" in err and "--csv-map" in err  # the sensors lack their columns
    err = error("machine-heavy", data, tmp_path / "no-such-dir" / "o.csv", *mapped)
    assert "no-such-dir" in err and "cannot write the output" in err
    assert not out.exists()


@pytest.fixture
def without_pyarrow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """pyarrow made unimportable, as where it is not installed (fault injection)."""
    import builtins  # noqa: PLC0415

    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("pyarrow"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    recordings._arrow_csv.cache_clear()
    yield
    monkeypatch.undo()
    recordings._arrow_csv.cache_clear()


@pytest.mark.usefixtures("without_pyarrow")
def test_parquet_without_pyarrow_says_how_to_get_it(
    tmp_path: Path, model_packages: ModelPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "rec.csv"
    _recording(data, load_package(model_packages.heavy), 20)
    args = [
        "--model",
        "machine-heavy",
        "--input",
        str(data),
        "--output",
        str(tmp_path / "o.parquet"),
    ]
    assert main(_args(model_packages, tmp_path, *args)) == 2
    err = capsys.readouterr().err
    assert "pyarrow" in err and "edgeloop[parquet]" in err


def _rough_recording(path: Path, package: ModelPackage, n: int) -> None:
    """Blocks pyarrow's reader takes whole (clean; empty cells; millisecond
    timestamps; spaces around some of a device's names; CRLF) and blocks it hands back to
    the fallback (a bad cell, a blank line, a short row, spaces around a number)."""
    names = package.manifest.input.sensor_names
    rng = np.random.default_rng(4)
    x = np.array(package.manifest.input.fallback) * (1 + rng.normal(0, 0.05, (n, len(names))))
    lines = ["ts,device," + ",".join(names)]
    for i, row in enumerate(x.tolist()):
        cells = [repr(v) for v in row]
        if 100 <= i < 200 and i % 3 == 0:
            cells[i % len(cells)] = ""  # a dropout: pyarrow and the row parser agree
        device = f" d{i % 3} " if i % 2 else f"d{i % 3}"  # one device, two spellings
        lines.append(f"{1_763_719_200_000 + 250 * i},{device}," + ",".join(cells))
    cells = lines[350].split(",")
    lines[350] = ",".join([*cells[:2], "n/a", *cells[3:]])
    lines[450] = ""
    lines[550] = lines[550].rsplit(",", 2)[0]
    lines[650] = lines[650].replace(",", ", ", 3)
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())


def test_pyarrow_and_the_fallback_reader_write_the_same_file(
    tmp_path: Path, model_packages: ModelPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pyarrow")
    package = load_package(model_packages.heavy)
    data = tmp_path / "rough.csv"
    _rough_recording(data, package, 800)
    options = CsvOptions(device_column="device")
    fast = score_files(package, [data], tmp_path / "arrow.csv", "csv", options, chunk_rows=100)
    blocks: list[int] = []
    arrow_block = recordings.Recording._arrow_block

    def counted(self: recordings.Recording, *args: Any) -> recordings.Chunk | None:
        chunk = arrow_block(self, *args)
        blocks.append(chunk is not None)
        return chunk

    monkeypatch.setattr(recordings.Recording, "_arrow_block", counted)
    score_files(package, [data], tmp_path / "again.csv", "csv", options, chunk_rows=100)
    assert 0 < sum(blocks) < len(blocks)  # both kinds of block were in the file
    monkeypatch.undo()
    recordings._arrow_csv.cache_clear()
    monkeypatch.setattr(recordings, "_arrow_csv", lambda: None)
    slow = score_files(package, [data], tmp_path / "fallback.csv", "csv", options, chunk_rows=100)
    assert (tmp_path / "arrow.csv").read_bytes() == (tmp_path / "fallback.csv").read_bytes()
    assert (fast.rows, fast.bad_cells) == (slow.rows, slow.bad_cells) == (799, 1 + 8)


def _forty_rows(tmp_path: Path, models: ModelPaths) -> tuple[ModelPackage, Path, list[str]]:
    """A recording of 40 rows (:func:`_recording`) and the ``batch score`` arguments for it."""
    package = load_package(models.heavy)
    data = tmp_path / "rec.csv"
    _recording(data, package, 40)
    args = ["--model", "machine-heavy", "--input", str(data), "--output", str(tmp_path / "o.csv")]
    args += ["--ts-column", "when", "--csv-map", _csv_map(package)]
    return package, data, _args(models, tmp_path, *args)


def test_a_sensor_with_no_usable_value_is_a_warning_and_exit_1(
    tmp_path: Path, model_packages: ModelPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    package, data, argv = _forty_rows(tmp_path, model_packages)
    # Decimal commas in one column: every cell of it is text to the reader.
    lines = data.read_text().splitlines()
    first = package.manifest.input.sensor_names[0]
    fixed = [lines[0]]
    for line in lines[1:]:
        cells = line.split(";")
        cells[2] = "0,5"
        fixed.append(";".join(cells))
    data.write_text("\n".join(fixed) + "\n")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"sensor(s) {first} had no usable value in any of the 40 rows" in err
    assert "decimal comma" in err


def test_timestamps_out_of_order_in_a_series_are_a_warning_and_exit_1(
    tmp_path: Path, model_packages: ModelPaths, capsys: pytest.CaptureFixture[str]
) -> None:
    _, data, argv = _forty_rows(tmp_path, model_packages)
    argv += ["--device-column", "machine"]
    # Two devices interleaved, each in time order: no warning.
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["ts_not_increasing"] == 0
    # Device a's readings at lines 12 and 14 swapped: the later one comes first.
    lines = data.read_text().splitlines()
    lines[11], lines[13] = lines[13], lines[11]
    data.write_text("\n".join(lines) + "\n")
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[-1])["ts_not_increasing"] == 1
    assert "1 reading(s) have a timestamp not after the previous one" in captured.err
    assert f"{data} line 14 (device a)" in captured.err and "Sort the file" in captured.err
