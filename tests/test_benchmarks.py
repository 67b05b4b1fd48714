"""The benchmark scripts run end to end and write what docs/performance.md reads (no timing is
asserted: the numbers are the benchmarks' business). A broken script would waste a GPU machine,
which is lent rarely and briefly."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.mark.slow
def test_episode_benchmark_writes_every_part_and_ratio(tmp_path):
    out = tmp_path / "episode.json"
    proc = _run(["benchmarks/episode.py", "--preset", "cpu-digits", "--repeats", "1", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    for key in ("float_epoch_s", "float_validation_s", "quant_epoch_s", "calibration_s", "validation_s",
                "agent_and_env_s"):
        assert res[key] > 0, key
    assert res["agent_error"] is None
    episode = res["calibration_s"] + res["quant_epoch_s"] + res["validation_s"] + res["agent_and_env_s"]
    assert res["episode_s"] == pytest.approx(episode)
    assert res["rest_share"] == pytest.approx(res["agent_and_env_s"] / episode)
    assert res["episode_over_float_epoch_and_validation"] == pytest.approx(
        episode / (res["float_epoch_s"] + res["float_validation_s"]))
    assert res["compile"] is False and res["train_images"] == 1100


@pytest.mark.slow
def test_search_benchmark_runs_the_search_it_is_given(tmp_path):
    out = tmp_path / "search.json"
    proc = _run(["benchmarks/search.py", "--episodes", "3", "--no-compile", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["config"] == {"model": "digits-mbv2", "hw": "bismo-edge", "method": "ilp", "episodes": 3, "workers": 1,
                             "device": "cpu", "compile": False}
    assert 1 <= res["distinct_policies"] <= 3 and res["search_s"] > 0 and res["peak_rss_mb"] > 0


def test_slim_wheel_drops_folders_and_their_record_lines_and_keeps_permissions(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from slim_wheel import slim
    finally:
        sys.path.pop(0)
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    executable = zipfile.ZipInfo("pkg/bin/tool")
    executable.external_attr = (stat.S_IFREG | 0o755) << 16
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/__init__.py", "")
        z.writestr(executable, "#!/bin/sh\n")
        z.writestr("pkg/jars/big.jar", "x" * 1000)
        z.writestr("pkg-1.0.dist-info/RECORD", "pkg/__init__.py,,\npkg/bin/tool,,\npkg/jars/big.jar,,\n")
    out = slim(wheel, tmp_path / "slim", ["pkg/jars"])
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == ["pkg-1.0.dist-info/RECORD", "pkg/__init__.py", "pkg/bin/tool"]
        assert z.read("pkg-1.0.dist-info/RECORD").decode() == "pkg/__init__.py,,\npkg/bin/tool,,\n"
        assert (z.getinfo("pkg/bin/tool").external_attr >> 16) & 0o777 == 0o755
    with pytest.raises(SystemExit, match="overwrite"):
        slim(wheel, tmp_path, ["pkg/jars"])
