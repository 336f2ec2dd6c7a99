"""examples/demo_calibrate.py: bg_thresh chosen from a calibration sweep (the demo's threshold rule)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "demo_calibrate.py"


def _metrics(points, split="val-caption"):
    return {
        "splits": {
            split: {
                "mIoU": 0.0,
                "sweep": {"key": "bg_thresh", "points": [{"value": v, "mIoU": m} for v, m in points]},
            }
        }
    }


def _run(tmp_path, data, *args):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    return subprocess.run([sys.executable, str(SCRIPT), str(path), *args], capture_output=True, text=True)


def test_picks_the_best_value_and_the_lowest_on_a_tie(tmp_path):
    res = _run(tmp_path, _metrics([(0.1, 5.0), (0.2, 7.5), (0.3, 6.0)]))
    assert res.returncode == 0 and res.stdout.strip() == "0.2"
    res = _run(tmp_path, _metrics([(0.1, 5.0), (0.4, 8.0), (0.7, 8.0)]))
    assert res.stdout.strip() == "0.4"
    res = _run(tmp_path, _metrics([(0.1, 1.0), (0.5, 2.0)], split="val-heldout"), "val-heldout")
    assert res.stdout.strip() == "0.5"


def test_a_metrics_file_without_a_sweep_is_one_line(tmp_path):
    res = _run(tmp_path, {"splits": {"val-caption": {"mIoU": 3.0}}})
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error:") and "--sweep" in res.stderr
