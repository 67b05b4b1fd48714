"""`haq sweep`: one method over several budgets, the held-out curve and the pick within a drop."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from haq.sweep import SWEEP_COLUMNS, budget_folder, pick_within


def test_the_pick_is_the_cheapest_row_within_the_drop_on_search_validation():
    df = pd.DataFrame([
        {"kind": "uniform", "policy": "w2a2", "cost": 1.0, "val_accuracy": 20.0, "test_accuracy": 99.0, "fp_accuracy": 98.0},
        {"kind": "searched", "policy": "a", "cost": 2.0, "val_accuracy": 96.5, "test_accuracy": 90.0, "fp_accuracy": 98.0},
        {"kind": "searched", "policy": "b", "cost": 2.0, "val_accuracy": 97.5, "test_accuracy": 91.0, "fp_accuracy": 98.0},
        {"kind": "uniform", "policy": "w8a8", "cost": 5.0, "val_accuracy": 98.0, "test_accuracy": 99.0, "fp_accuracy": 98.0},
    ])
    # within 2 points: a, b (cost 2) and w8a8; the cheapest, and of equal cost the more accurate; the
    # held-out column is never read (w2a2's 99% held out does not make it eligible)
    assert pick_within(df, 2.0)["policy"] == "b"
    assert pick_within(df, 0.0)["policy"] == "w8a8"
    assert pick_within(df.iloc[:3], 0.1) is None
    with pytest.raises(ValueError, match="must be >= 0"):
        pick_within(df, -1)
    assert budget_folder("w3a4") == "w3a4" and budget_folder("0.6") == "ratio-0.6"


def test_a_sweep_writes_its_curve_and_pick_and_reads_finished_budgets_back(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("select_finetunes: 1\nselect_top: 1\nfinetune: {max_train_images: 96}\nquant: {calib_images: 96}\n")
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "haq.cli", "sweep", "--config", str(cfg), "--budgets", "w3a3", "0.6", "--method",
           "random", "--episodes", "2", "--out", str(out), "--max-drop", "100"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    df = pd.read_csv(out / "sweep.csv")
    assert list(df.columns) == SWEEP_COLUMNS
    searched, uniform = df[df["kind"] == "searched"], df[df["kind"] == "uniform"]
    assert searched["budget"].astype(str).tolist() == ["w3a3", "0.6"] and (searched["method"] == "random").all()
    assert uniform["policy"].tolist() == [f"w{b}a{b}" for b in range(2, 9)]
    assert (searched["cost_ratio"] <= [0.3451 + 1e-4, 0.6 + 1e-9]).all()  # within each budget (w3a3: 0.345 of w8a8)
    for budget, folder in (("w3a3", "w3a3"), ("0.6", "ratio-0.6")):  # each search's own run folder and summary
        summary = json.loads((out / folder / "summary.json").read_text())
        row = searched[searched["budget"].astype(str) == budget].iloc[0]
        assert summary["selected"]["test_accuracy"] == pytest.approx(row["test_accuracy"], abs=1e-3)
    pick = json.loads((out / "pick.json").read_text())
    assert pick["policy"] == "w2a2"  # a drop of 100 points admits every row: the cheapest is uniform 2-bit
    assert (out / "sweep.png").stat().st_size > 0 and "cheapest within 100" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # done: read back, nothing rerun
    assert again.returncode == 0, again.stderr
    assert pd.read_csv(out / "sweep.csv").equals(df)
    assert "search w3a3" not in again.stderr and again.stderr.count("(done: read back)") == 2
