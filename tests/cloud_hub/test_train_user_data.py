"""``models train`` on a user's own data: two-label files, and what a failed run
leaves behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.pipeline.train import holdout_metrics
from shared.manifest import load_package
from simulators.rig import apply_labels, labels_for, rig_values, write_rig_csv
from tests.cloud_hub.train_cli import run_cli, train_argv

pytestmark = pytest.mark.timeout(90)


_run = run_cli


def test_auc_of_two_classes() -> None:
    y = np.array([0, 0, 0, 1, 1, 0, 1, 0], np.int64)
    p1 = np.array([0.1, 0.2, 0.3, 0.8, 0.7, 0.75, 0.9, 0.05], np.float32)
    scores = np.column_stack([1 - p1, p1]).astype(np.float32)
    m = holdout_metrics(scores, y, 1, 0.5)
    assert m["auc_macro"] == pytest.approx(14 / 15)
    assert m["urgent_recall"] == 1.0 and m["urgent_precision"] == 0.75


@pytest.mark.timeout(120)
def test_two_label_training_end_to_end_and_a_failed_run_leaves_no_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 4000
    labels = ["ok" if s == "warn" else s for s in labels_for(n)]
    csv = write_rig_csv(tmp_path / "rig.csv", apply_labels(rig_values(n, 4), labels), labels)
    argv = train_argv(tmp_path, "--data", str(csv), "--label", "state", "--urgent", "alarm")
    # An unreachable int8 agreement fails the run after the model folders were made.
    _, err = _run(capsys, [*argv, "--min-agreement", "1.5"], status=2)
    assert "agree" in err, err
    assert not (tmp_path / "models").exists(), list((tmp_path / "models").rglob("*"))
    lines, _ = _run(capsys, argv)
    result = json.loads(lines[-1])
    for variant in ("edge", "heavy"):
        m = load_package(Path(result[variant])).manifest
        assert set(m.output.classes) == {"alarm", "ok"}
        assert m.metrics["auc_macro"] >= 0.9 and m.metrics["urgent_recall"] >= 0.8
