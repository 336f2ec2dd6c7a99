"""examples/ablation.sh (not run here: 6 demo trainings) and its summary examples/ablation_summary.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = ROOT / "examples" / "ablation_summary.py"


def _write(out: Path, variant: str, seed: int, miou: dict[str, float]) -> None:
    run = out / f"{variant}-s{seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"splits": {s: {"mIoU": v} for s, v in miou.items()}}))


def test_summary_table_and_verdicts(tmp_path):
    _write(tmp_path, "groupvit", 0, {"val-caption": 10.0, "val-heldout": 5.0})
    _write(tmp_path, "groupvit", 1, {"val-caption": 11.0, "val-heldout": 6.0})
    _write(tmp_path, "released", 0, {"val-caption": 10.5, "val-heldout": 9.0})
    _write(tmp_path, "released", 1, {"val-caption": 11.5, "val-heldout": 9.5})
    _write(tmp_path, "intent", 0, {"val-caption": 14.0, "val-heldout": 3.0})
    _write(tmp_path, "intent", 1, {"val-caption": 13.0, "val-heldout": 3.5})
    out = subprocess.run(
        [sys.executable, str(SUMMARY), str(tmp_path)], capture_output=True, text=True, check=True
    )
    text = out.stdout
    assert "| val-caption | GroupViT (NPR off) | 10.0, 11.0 | 10.5 | 1.0 |" in text
    assert "| val-heldout | PGSeg, intent mode (default) | 3.0, 3.5 | 3.2 | 0.5 |" in text
    # means 10.5 vs 11.0 (gain 0.5 <= spread 1.0): a tie; 13.5 vs 10.5: beats; heldout 3.25 vs 5.5: trails
    assert "- val-caption: PGSeg, released-code mode ties with GroupViT (+0.5 mIoU, seed spread 1.0)" in text
    assert "- val-caption: PGSeg, intent mode (default) beats GroupViT (+3.0 mIoU, seed spread 1.0)" in text
    assert "- val-heldout: PGSeg, intent mode (default) trails GroupViT (-2.2 mIoU, seed spread 1.0)" in text


def test_summary_without_runs_fails(tmp_path):
    out = subprocess.run([sys.executable, str(SUMMARY), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode != 0 and "no <variant>" in out.stderr


@pytest.mark.parametrize("script", ["ablation.sh"])
def test_ablation_script_parses(script):
    subprocess.run(["bash", "-n", str(ROOT / "examples" / script)], check=True)
