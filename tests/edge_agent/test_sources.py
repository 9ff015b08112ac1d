"""Where readings enter: CSV replay, JSON lines on stdin, plug-ins, the simulated machine."""

from __future__ import annotations

import io
import itertools
import math
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edge_agent.settings import AgentSettings, load_settings
from edge_agent.sources.base import Reading, Source
from edge_agent.sources.csv_replay import CsvReplaySource, parse_timestamp
from edge_agent.sources.plugins import GROUP, load_plugin
from edge_agent.sources.simulated import SimulatedSource
from edge_agent.sources.stdin_jsonl import StdinSource, parse_line
from shared.errors import ConfigError
from simulators.machine import MachineConfig, SimulatedMachine
from simulators.sensors import SENSOR_NAMES, SENSORS

pytestmark = pytest.mark.timeout(30)

HEADER = ",".join(["ts", *SENSOR_NAMES])
ROW = ",".join(str(v) for v in range(1, len(SENSOR_NAMES) + 1))  # "1,2,...,8"
VALUES = [float(v) for v in range(1, len(SENSOR_NAMES) + 1)]


def write_csv(path: Path, *lines: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def collect(source: Source, stop: threading.Event | None = None) -> list[Reading]:
    return list(source.readings(stop or threading.Event()))


# -- CSV replay ---------------------------------------------------------------------------------


def test_csv_header_check_names_missing_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", header="ts,temperature,pressure,extra")
    with pytest.raises(ConfigError) as info:
        CsvReplaySource(path, SENSOR_NAMES)
    text = str(info.value)
    assert info.value.setting == "csv_map"
    missing = [s for s in SENSOR_NAMES if s not in ("temperature", "pressure")]
    assert f"lacks the sensor(s) {', '.join(missing)}." in text
    assert f"The model reads: {', '.join(SENSOR_NAMES)};" in text  # both lists
    assert "has: ts, temperature, pressure, extra" in text
    assert "--csv-map vibration=<column>" in text
    assert str(path) in text


def test_csv_header_check_names_a_missing_timestamp_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", f"1.0,{ROW}")
    with pytest.raises(ConfigError, match="has no timestamp column 'time'") as info:
        CsvReplaySource(path, SENSOR_NAMES, ts_column="time")
    assert info.value.setting == "csv_ts_column"


@pytest.mark.parametrize(("sep", "name"), [(";", ";"), ("\t", "tab"), (",", ",")])
def test_csv_separated_by_semicolon_or_tab_is_detected_or_named(
    tmp_path: Path, sep: str, name: str
) -> None:
    path = tmp_path / "rig.csv"
    path.write_text(
        HEADER.replace(",", sep) + "\n" + f"1.0,{ROW}".replace(",", sep) + "\n", encoding="utf-8"
    )
    for delimiter in ("auto", name):
        (r,) = collect(CsvReplaySource(path, SENSOR_NAMES, pace="fast", delimiter=delimiter))
        assert r.ts == 1.0 and r.values.tolist() == VALUES, delimiter


def test_csv_with_another_separator_than_named_shows_the_header_as_read(tmp_path: Path) -> None:
    path = tmp_path / "rig.csv"
    path.write_text(HEADER.replace(",", ";") + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        CsvReplaySource(path, SENSOR_NAMES, delimiter=",")
    text = str(info.value)
    assert "its header is one field at ','; ';' splits it into 9: use --csv-delimiter ';'" in text


def test_agent_settings_take_the_csv_delimiter(tmp_path: Path) -> None:
    base = ["--model", str(tmp_path), "--source", "csv", "--csv-path", "x.csv"]
    assert load_settings(base, env={}).csv_delimiter == "auto"
    assert load_settings([*base, "--csv-delimiter", "tab"], env={}).csv_delimiter == "tab"
    with pytest.raises(ConfigError, match="csv_delimiter"):
        load_settings([*base, "--csv-delimiter", "|"], env={})


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_csv_unreadable_or_empty(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "a.csv"
    if kind == "empty":
        path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        CsvReplaySource(path, SENSOR_NAMES)
    assert info.value.setting == "csv_path"
    assert str(path) in str(info.value)


def test_csv_columns_in_any_order_extra_ignored_bom_accepted(tmp_path: Path) -> None:
    names = list(reversed(SENSOR_NAMES))
    path = tmp_path / "a.csv"
    # A spreadsheet's byte-order mark, columns in another order, an extra column.
    text = (
        "note,"
        + ",".join(names)
        + ",ts\n"
        + "x,"
        + ",".join(str(float(SENSOR_NAMES.index(n) + 1)) for n in names)
        + ",5.0\n"
    )
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    (r,) = collect(CsvReplaySource(path, SENSOR_NAMES, pace="fast"))
    assert r.ts == 5.0
    assert r.values.tolist() == VALUES


def test_csv_iso_and_unix_timestamps(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "a.csv",
        f"1763719200.25,{ROW}",
        f"2026-11-21T10:00:00.250Z,{ROW}",
        f"2026-11-21T10:00:01+01:00,{ROW}",
    )
    got = [r.ts for r in collect(CsvReplaySource(path, SENSOR_NAMES, pace="fast"))]
    assert got == [
        1763719200.25,
        datetime(2026, 11, 21, 10, 0, 0, 250_000, tzinfo=UTC).timestamp(),
        datetime(2026, 11, 21, 9, 0, 1, tzinfo=UTC).timestamp(),
    ]
    assert parse_timestamp("17") == 17.0


def test_csv_empty_cell_is_nan(tmp_path: Path) -> None:
    cells = ROW.split(",")
    cells[2] = ""
    cells[5] = " "
    path = write_csv(tmp_path / "a.csv", "1.0," + ",".join(cells))
    (r,) = collect(CsvReplaySource(path, SENSOR_NAMES, pace="fast"))
    assert r.values.dtype == np.float64
    assert math.isnan(r.values[2])
    assert math.isnan(r.values[5])
    assert np.isfinite(np.delete(r.values, [2, 5])).all()


def test_csv_bad_cells_are_missing_values_and_bad_timestamps_skip_the_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [
        f"yesterday,{ROW}",  # timestamp not parseable
        f"nan,{ROW}",  # timestamp not finite
        f"2.0,{ROW.replace('3', 'three')}",  # value not a number
        "3.0,1,2",  # too short
        f"4.0,{ROW.replace('4', 'inf')}",  # infinite value
        f"4.5,{'9' * 200_000},2,3,4,5,6,7,8",  # a field over csv's size limit
    ]
    path = write_csv(tmp_path / "a.csv", f"1.0,{ROW}", *bad, f"5.0,{ROW}")
    with path.open("ab") as fh:  # bytes that are not UTF-8 spoil their row only
        fh.write(b"6.0,\xff\xfe,2,3,4,5,6,7,8\n" + f"7.0,{ROW}\n".encode())
    source = CsvReplaySource(path, SENSOR_NAMES, pace="fast")
    got = collect(source)
    assert [r.ts for r in got] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert np.isnan(got[1].values[2]) and got[1].values[0] == 1.0  # "three": missing
    assert np.isnan(got[2].values[2:]).all()  # a short row's missing cells
    assert source.invalid == {"csv_bad_row": 3, "csv_bad_cell": 3, "csv_short_row": 1}
    assert "line 5, column 'pressure': 'three' is not a number" in caplog.text


def test_csv_decimal_commas_keep_the_rows_and_say_what_to_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    header = HEADER.replace(",", ";")
    rows = [f"{t};" + ";".join(f"{v},5" for v in range(1, 9)) for t in range(1, 4)]
    source = CsvReplaySource(write_csv(tmp_path / "a.csv", *rows, header=header), SENSOR_NAMES)
    source.pace = "fast"
    got = collect(source)
    assert len(got) == 3 and np.isnan(got[0].values).all()
    assert source.invalid == {"csv_bad_cell": 24}
    warned = [r.getMessage() for r in caplog.records if "not a number" in r.getMessage()]
    assert len(warned) == 8, warned  # once per column
    assert "line 2, column 'temperature': '1,5'" in warned[0]
    assert 'write numbers with "." as the decimal point' in warned[0]
    assert "no cell of column(s) 'temperature', 'vibration'" in caplog.text


def test_csv_with_no_usable_row_says_so_and_disordered_rows_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_csv(tmp_path / "a.csv", f"x,{ROW}", f"y,{ROW}")
    source = CsvReplaySource(path, SENSOR_NAMES, pace="fast")
    assert collect(source) == [] and source.invalid == {"csv_bad_row": 2}
    assert "none of its 2 rows gave a reading (csv_bad_row: 2)" in caplog.text
    path = write_csv(tmp_path / "b.csv", f"2,{ROW}", f"1,{ROW}", f"1,{ROW}", f"3,{ROW}")
    source = CsvReplaySource(path, SENSOR_NAMES, pace="fast")
    assert [r.ts for r in collect(source)] == [2.0, 1.0, 1.0, 3.0]  # file order
    assert source.invalid == {"csv_ts_not_increasing": 2}
    assert caplog.text.count("is not after the previous row's") == 1


def test_csv_fast_pace_yields_all_rows(tmp_path: Path) -> None:
    # A recording spanning an hour replays at once.
    path = write_csv(tmp_path / "a.csv", *(f"{i * 3600.0 / 499},{ROW}" for i in range(500)))
    t0 = time.monotonic()
    got = collect(CsvReplaySource(path, SENSOR_NAMES, pace="fast"))
    assert len(got) == 500
    assert time.monotonic() - t0 < 5
    assert got[-1].ts == 3600.0


def test_csv_recorded_pace(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", f"100.0,{ROW}", f"100.1,{ROW}", f"100.2,{ROW}")
    t0 = time.monotonic()
    got = collect(CsvReplaySource(path, SENSOR_NAMES, pace="recorded"))
    elapsed = time.monotonic() - t0
    assert [r.ts for r in got] == [100.0, 100.1, 100.2]
    assert elapsed >= 0.2


def test_csv_recorded_pace_is_interrupted_by_stop(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", f"100.0,{ROW}", f"160.0,{ROW}")  # a minute apart
    stop = threading.Event()
    it = CsvReplaySource(path, SENSOR_NAMES, pace="recorded").readings(stop)
    assert next(it).ts == 100.0
    timer = threading.Timer(0.1, stop.set)
    timer.start()
    t0 = time.monotonic()
    assert list(it) == []  # the wait for the second row ends at the stop
    assert time.monotonic() - t0 < 2.0
    timer.join()


def test_csv_stop_before_start_yields_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_csv(tmp_path / "a.csv", f"1.0,{ROW}")
    stop = threading.Event()
    stop.set()
    assert collect(CsvReplaySource(path, SENSOR_NAMES, pace="fast"), stop) == []
    assert "gave no reading" not in caplog.text  # stopped: the file is not to blame


def test_csv_with_a_header_and_no_rows_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_csv(tmp_path / "a.csv", "", "")  # the header, then blank lines
    assert collect(CsvReplaySource(path, SENSOR_NAMES, pace="fast")) == []
    assert f"CSV file {path} gave no reading: it has a header but no data rows" in caplog.text


# -- JSON lines on stdin ------------------------------------------------------------------------


def test_parse_line_forms() -> None:
    r = parse_line(
        '{"ts": 1.5, "temperature": 64.2, "vibration": null, "speed": 1790}', SENSOR_NAMES
    )
    assert r.ts == 1.5
    assert r.values[SENSOR_NAMES.index("temperature")] == 64.2
    assert r.values[SENSOR_NAMES.index("speed")] == 1790.0
    assert math.isnan(r.values[SENSOR_NAMES.index("vibration")])  # null: a dropout
    assert math.isnan(r.values[SENSOR_NAMES.index("pressure")])  # absent: a dropout
    r = parse_line(
        f'{{"ts": 2, "values": [{", ".join(map(str, VALUES[:-1]))}, null]}}', SENSOR_NAMES
    )
    assert r.ts == 2.0
    assert r.values[:-1].tolist() == VALUES[:-1]
    assert math.isnan(r.values[-1])
    before = time.time()
    assert parse_line('{"temperature": 1}', SENSOR_NAMES).ts >= before  # no ts: now


BAD_LINES = [
    "not json",
    "[1, 2, 3]",
    '{"ts": "noon", "temperature": 1}',
    '{"ts": null}',
    '{"ts": 1e999}',
    '{"ts": ' + "9" * 400 + "}",
    '{"values": [1, 2]}',
    '{"values": "12345678"}',
    '{"temperature": true}',
    '{"temperature": "hot"}',
    '{"temperature": NaN}',
    '{"temperature": ' + "9" * 400 + "}",
    "[" * 100_000 + "]" * 100_000,
]


@pytest.mark.parametrize("line", BAD_LINES, ids=lambda s: s[:30])
def test_parse_line_rejects_with_value_error(line: str) -> None:
    with pytest.raises(ValueError):
        parse_line(line, SENSOR_NAMES)


def test_stdin_source_good_bad_and_eof() -> None:
    text = "\n".join(
        [
            '{"ts": 1, "temperature": 64.2}',
            "",
            *BAD_LINES,
            '{"ts": 2, "values": [1, 2, 3, 4, 5, 6, 7, 8]}',
            "   ",
        ]
    )
    source = StdinSource(io.StringIO(text), SENSOR_NAMES)
    got = collect(source)  # returns at EOF
    assert [r.ts for r in got] == [1.0, 2.0]
    assert got[1].values.tolist() == VALUES
    assert source.invalid == {"stdin_bad_line": len(BAD_LINES)}


def test_stdin_source_with_more_lines_than_its_queue() -> None:
    text = "".join(f'{{"ts": {i}, "temperature": 1}}\n' for i in range(1000))
    got = collect(StdinSource(io.StringIO(text), SENSOR_NAMES, queue_size=4))
    assert [r.ts for r in got] == [float(i) for i in range(1000)]


def test_stdin_source_undecodable_bytes() -> None:
    data = b'{"ts": 1, "temperature": 1}\n\xff\xfe{"ts": 2}\n{"ts": 3, "temperature": 1}\n'
    # The agent reads stdin with errors="replace": the bad line is counted, the rest kept.
    source = StdinSource(
        io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace"), SENSOR_NAMES
    )
    assert [r.ts for r in collect(source)] == [1.0, 3.0]
    assert source.invalid == {"stdin_bad_line": 1}
    # A strict stream ends the source, counted; it never leaves the reading loop waiting.
    source = StdinSource(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"), SENSOR_NAMES)
    collect(source)
    assert source.invalid["stdin_read_error"] == 1


def test_stdin_source_stops_while_input_is_silent() -> None:
    class Silent(io.TextIOBase):
        """A stdin that never sends a line (a sensor that went quiet)."""

        def __init__(self) -> None:
            self.closed_event = threading.Event()

        def readline(self, size: int | None = -1) -> str:
            self.closed_event.wait(30)
            return ""

    stream = Silent()
    stop = threading.Event()
    timer = threading.Timer(0.1, stop.set)
    timer.start()
    t0 = time.monotonic()
    assert collect(StdinSource(stream, SENSOR_NAMES), stop) == []
    assert time.monotonic() - t0 < 2.0
    stream.closed_event.set()
    timer.join()


# -- plug-ins -----------------------------------------------------------------------------------


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real installed distribution (a .dist-info on sys.path) with edgeloop.sources plug-ins."""
    (tmp_path / "fake_edgeloop_driver.py").write_text(
        textwrap.dedent(
            """
            import threading
            import numpy as np
            from edge_agent.sources.base import Reading

            class Driver:
                def __init__(self, settings):
                    self.device = settings.device
                    self.invalid = {}

                def readings(self, stop):
                    for i in range(3):
                        yield Reading(float(i), np.full(8, float(i)))

            def make_source(settings):
                return Driver(settings)

            def with_sensors(settings, sensors):
                driver = Driver(settings)
                driver.sensors = [s.name for s in sensors]
                return driver

            def broken(settings):
                raise RuntimeError("no ADC on /dev/spidev0.0")

            def not_a_source(settings):
                return 42
            """
        ),
        encoding="utf-8",
    )
    info = tmp_path / "fake_edgeloop_driver-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-edgeloop-driver\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[{GROUP}]\n"
        "fake-adc = fake_edgeloop_driver:make_source\n"
        "named-adc = fake_edgeloop_driver:with_sensors\n"
        "broken-adc = fake_edgeloop_driver:broken\n"
        "odd-adc = fake_edgeloop_driver:not_a_source\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _plugin_settings(name: str) -> AgentSettings:
    return load_settings(
        ["--model", "m", "--source", "plugin", "--plugin", name, "--device", "pi-9"], env={}
    )


def test_plugin_is_loaded_from_its_entry_point(plugin_dir: Path) -> None:
    source = load_plugin("fake-adc", _plugin_settings("fake-adc"), SENSORS)
    assert source.device == "pi-9"  # type: ignore[attr-defined]
    assert [r.ts for r in collect(source)] == [0.0, 1.0, 2.0]


def test_plugin_is_told_the_models_sensors(plugin_dir: Path) -> None:
    source = load_plugin("named-adc", _plugin_settings("named-adc"), SENSORS)
    assert source.sensors == list(SENSOR_NAMES)  # type: ignore[attr-defined]


def test_unknown_plugin_lists_the_installed_ones(plugin_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_plugin("spi-adc", _plugin_settings("spi-adc"), SENSORS)
    text = str(info.value)
    assert info.value.setting == "plugin"
    assert "'spi-adc'" in text
    assert GROUP in text
    assert "installed: broken-adc, fake-adc, named-adc, odd-adc" in text


def test_unknown_plugin_with_none_installed() -> None:
    with pytest.raises(ConfigError, match="installed: "):
        load_plugin("no-such-driver-xyz", _plugin_settings("x"), SENSORS)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("broken-adc", "failed to start.*spidev0"),
        ("odd-adc", "returned int, which has no readings"),
    ],
)
def test_broken_plugin_is_a_config_error(plugin_dir: Path, name: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as info:
        load_plugin(name, _plugin_settings(name), SENSORS)
    assert info.value.setting == "plugin"


# -- the simulated machine ----------------------------------------------------------------------


def test_simulated_source_yields_the_machines_values() -> None:
    config = MachineConfig(seed=11, dropout_prob=0.05)
    twin = SimulatedMachine(config)
    source = SimulatedSource(SimulatedMachine(config), rate_hz=10.0, realtime=False)
    got = list(itertools.islice(source.readings(threading.Event()), 300))
    for reading, expected in zip(got, twin.readings(300), strict=True):
        np.testing.assert_array_equal(reading.values, expected.values)
    assert any(np.isnan(r.values).any() for r in got)  # dropouts come through as NaN
    assert source.invalid == {}


def test_simulated_source_realtime_pace_and_stop() -> None:
    source = SimulatedSource(SimulatedMachine(MachineConfig(seed=1)), rate_hz=50.0)
    stop = threading.Event()
    t0 = time.monotonic()
    it = source.readings(stop)
    got = list(itertools.islice(it, 6))  # 5 periods of 20 ms after the first
    assert time.monotonic() - t0 >= 0.1 - 0.005
    assert len(got) == 6
    stop.set()
    assert list(it) == []


# -- the contract every source keeps ------------------------------------------------------------


def _sim(_: Path) -> Source:
    return SimulatedSource(SimulatedMachine(MachineConfig(seed=2)), 1000.0, realtime=False)


def _csv(tmp: Path) -> Source:
    return CsvReplaySource(
        write_csv(tmp / "c.csv", *(f"{i},{ROW}" for i in range(50))), SENSOR_NAMES, pace="fast"
    )


def _stdin(_: Path) -> Source:
    return StdinSource(io.StringIO("".join(f'{{"ts": {i}}}\n' for i in range(50))), SENSOR_NAMES)


@pytest.mark.parametrize("make", [_sim, _csv, _stdin], ids=["sim", "csv", "stdin"])
def test_source_contract(make: Callable[[Path], Source], tmp_path: Path) -> None:
    source = make(tmp_path)
    assert isinstance(source.invalid, dict)
    stop = threading.Event()
    it: Iterator[Reading] = source.readings(stop)
    for _ in range(10):
        r = next(it)
        assert isinstance(r, Reading)
        assert isinstance(r.ts, float)
        assert math.isfinite(r.ts)
        assert r.values.dtype == np.float64
        assert r.values.shape == (len(SENSOR_NAMES),)
        assert not np.isinf(r.values).any()
    stop.set()
    assert list(it) == []  # a set stop ends every source


# -- another sensor set: a test rig's ---------------------------------------------------------

RIG = ("vibration", "flow", "current")


def test_csv_maps_sensors_by_name_with_a_column_map_and_ms_timestamps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rig.csv"
    path.write_text(
        "datetime;vib_rms_g;Flow [l/min];current;operator\n"
        "1763719200000;0.12;50;12.5;ann\n"
        "1763719200250;;51;12.6;ann\n",
        encoding="utf-8",
    )
    with caplog.at_level("INFO", logger="edge_agent.sources.csv_replay"):
        source = CsvReplaySource(
            path,
            RIG,
            "datetime",
            pace="fast",
            column_map={"vibration": "vib_rms_g", "flow": "Flow [l/min]"},
        )
    said = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(said) == 1 and "operator" in said[0]
    got = collect(source)
    assert [r.ts for r in got] == [1763719200.0, 1763719200.25]
    assert got[0].values.tolist() == [0.12, 50.0, 12.5]
    assert math.isnan(got[1].values[0])  # an empty cell is a dropout


def test_csv_ts_unit_can_be_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "60000,1,2,3", header="ts,vibration,flow,current")
    (r,) = collect(CsvReplaySource(path, RIG, pace="fast", ts_unit="ms"))
    assert r.ts == 60.0
    (r,) = collect(CsvReplaySource(path, RIG, pace="fast", ts_unit="s"))
    assert r.ts == 60000.0


def test_csv_map_naming_an_unknown_sensor_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", "1,1,2,3", header="ts,vibration,flow,current")
    with pytest.raises(ConfigError, match="names 'pressure', which the model does not read"):
        CsvReplaySource(path, RIG, column_map={"pressure": "flow"})


def test_agent_settings_parse_the_csv_map(tmp_path: Path) -> None:
    base = ["--model", str(tmp_path), "--source", "csv", "--csv-path", "x.csv"]
    got = load_settings([*base, "--csv-map", "vibration=vib_rms_g, flow=Flow [l/min]"], env={})
    assert got.csv_map == {"vibration": "vib_rms_g", "flow": "Flow [l/min]"}
    assert load_settings(base, env={"EDGELOOP_AGENT_CSV_MAP": "a=b"}).csv_map == {"a": "b"}
    with pytest.raises(ConfigError, match=r"csv_map.*is not SENSOR=COLUMN"):
        load_settings([*base, "--csv-map", "vibration"], env={})


def test_json_lines_keyed_by_the_models_sensors() -> None:
    r = parse_line('{"ts": 1, "flow": 50, "vibration": 0.1, "humidity": 3}', RIG)
    assert r.values[:2].tolist() == [0.1, 50.0] and math.isnan(r.values[2])
    assert parse_line('{"ts": 1, "values": [1, 2, null]}', RIG).values[1] == 2.0
    with pytest.raises(ValueError, match=r"list of 3 numbers \(vibration, flow, current\)"):
        parse_line('{"ts": 1, "values": [1, 2]}', RIG)


def test_simulated_source_reorders_to_the_models_sensors() -> None:
    wanted = ("speed", "temperature")
    source = SimulatedSource(
        SimulatedMachine(MachineConfig(seed=3)), 10.0, realtime=False, sensors=wanted
    )
    twin = SimulatedMachine(MachineConfig(seed=3))
    got = next(iter(source.readings(threading.Event())))
    expected = twin.step().values
    idx = [SENSOR_NAMES.index(n) for n in wanted]
    np.testing.assert_array_equal(got.values, expected[idx])


def test_simulated_source_refuses_a_model_of_other_sensors() -> None:
    with pytest.raises(ConfigError) as info:
        SimulatedSource(SimulatedMachine(MachineConfig(seed=3)), 10.0, sensors=(*RIG, "ph"))
    text = str(info.value)
    assert "lacks the sensor(s) ph" in text and "vibration, flow, current, ph" in text
    assert ", ".join(SENSOR_NAMES) in text and "--source csv" in text
