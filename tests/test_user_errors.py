"""Inputs users bring that are wrong: each ends in one line naming the input, exit code 2, no
traceback, nothing of an existing run changed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import hw_models as H

pytestmark = pytest.mark.slow


def haq(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`haq ARGV...` as a user runs it, from `cwd` (whose modules it can import as plugins)."""
    paths = [str(cwd or Path.cwd()), str(Path(__file__).resolve().parents[1])]
    return subprocess.run([sys.executable, "-m", "haq.cli", *argv], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})


def one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    # the search's own progress line may come first ("preparing: ..."); the error is the one line after it
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("preparing: ")]
    assert len(lines) == 1 and lines[0].startswith("haq "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A real 3-episode search, as a user's earlier run."""
    base = tmp_path_factory.mktemp("user-errors")
    cfg = base / "cfg.yaml"
    cfg.write_text("episodes: 3\nwarmup: 2\nfinetune: {max_train_images: 96}\nquant: {calib_images: 96}\n")
    done = haq("search", "--config", str(cfg), "--out", str(base / "run"), "--no-held-out")
    assert done.returncode == 0, done.stderr
    return base / "run"


def damaged_copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def test_a_truncated_config_is_refused_on_resume(finished_run, tmp_path):
    run = damaged_copy(finished_run, tmp_path)
    text = (run / "config.yaml").read_text()
    lines = text.splitlines(keepends=True)
    (run / "config.yaml").write_text("".join(lines[: len(lines) // 3]))  # cut at a line: valid YAML, keys missing
    before = snapshot(run)
    one_line_error(haq("search", "--resume", str(run), "--episodes", "4"), f"{run / 'config.yaml'}", "lacks",
                   "damaged (truncated?)")
    (run / "config.yaml").write_text("")
    one_line_error(haq("search", "--resume", str(run)), "lacks")
    (run / "config.yaml").write_text(text[: len(text) // 3 + 7])  # cut inside a line
    one_line_error(haq("search", "--resume", str(run)), f"{run / 'config.yaml'}")
    (run / "config.yaml").write_text("".join(lines[: len(lines) // 3]))
    assert snapshot(run) == before


def test_a_torn_episode_row_is_refused_with_its_line(finished_run, tmp_path):
    run = damaged_copy(finished_run, tmp_path)
    lines = (run / "episodes.csv").read_text().splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"  # episode 2 of 3, all inside the checkpoint
    (run / "episodes.csv").write_text("".join(lines))
    before = snapshot(run)
    one_line_error(haq("search", "--resume", str(run), "--episodes", "4"), f"{run / 'episodes.csv'}: line 3",
                   "incomplete")
    assert snapshot(run) == before


def test_resume_may_extend_a_run_but_not_shorten_it(finished_run, tmp_path):
    run = damaged_copy(finished_run, tmp_path)
    before = snapshot(run)
    one_line_error(haq("search", "--resume", str(run), "--episodes", "2"), "has 3 episodes done",
                   "--episodes must be at least 3")
    assert snapshot(run) == before


def test_a_bad_device_is_one_line(finished_run, tmp_path):
    one_line_error(haq("search", "--device", "banana", "--out", str(tmp_path / "new")),
                   "device must be cpu, cuda or cuda:N, got 'banana'")
    assert not (tmp_path / "new").exists()
    one_line_error(haq("eval", "--policy", str(finished_run / "best_policy.json"), "--device", "banana"),
                   "got 'banana'")
    import torch

    if not torch.cuda.is_available():
        one_line_error(haq("search", "--device", "cuda", "--out", str(tmp_path / "new")),
                       "device 'cuda' asked for, but this torch has no CUDA device")


def test_raising_plugins_are_one_line(tmp_path):
    (tmp_path / "bad_plugins.py").write_text(
        "def build(num_classes=10):\n    raise RuntimeError('no GPU kernels here')\n\n"
        "class Npu:\n    def __init__(self, **kw):\n        raise KeyError('bandwidth')\n")
    (tmp_path / "broken_import.py").write_text("raise ImportError('needs libfoo')\n")
    one_line_error(haq("cost", "--model", "bad_plugins:build", "--input-shape", "1,8,8", cwd=tmp_path),
                   "model 'bad_plugins:build': the factory raised RuntimeError: no GPU kernels here")
    one_line_error(haq("cost", "--hw", "bad_plugins:Npu", cwd=tmp_path),
                   "hardware model 'bad_plugins:Npu': creating it raised KeyError")
    one_line_error(haq("cost", "--model", "broken_import:net", cwd=tmp_path),
                   "cannot import 'net' from 'broken_import' (ImportError: needs libfoo)")
    debug = haq("--debug", "cost", "--hw", "bad_plugins:Npu", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr  # --debug shows it


def test_lookup_tables_of_zeros_or_falling_costs_are_refused(tmp_path):
    layers = [H.LayerSpec("c", "conv", 3, 8, kernel=3, in_h=8, in_w=8, out_h=8, out_w=8)]
    df = H.build_table(H.create_hw_model("bismo-edge"), layers)
    df.assign(latency_ms=0.0).to_csv(tmp_path / "zeros.csv", index=False)
    with pytest.raises(H.LookupTableError, match=r"zeros.csv: every latency_ms is 0"):
        H.create_hw_model("lookup", path=str(tmp_path / "zeros.csv"))
    falling = df.copy()
    at = (falling["w_bits"] == 5) & (falling["a_bits"] == 3)
    falling.loc[at, "latency_ms"] = 0.5 * falling.loc[(falling["w_bits"] == 4) & (falling["a_bits"] == 3),
                                                      "latency_ms"].to_numpy()
    falling.to_csv(tmp_path / "falling.csv", index=False)
    with pytest.raises(H.LookupTableError, match=r"layer 'c': latency_ms falls from .* at w_bits=4 a_bits=3 to "
                                                 r".* at w_bits=5 a_bits=3; a cost may not fall with more w_bits"):
        H.create_hw_model("lookup", path=str(tmp_path / "falling.csv"))
    one_line_error(haq("cost", "--hw", "lookup", "--hw-param", f"path={tmp_path / 'zeros.csv'}"),
                   "every latency_ms is 0")
    assert pd.read_csv(tmp_path / "zeros.csv")["latency_ms"].eq(0).all()


def test_cost_into_a_missing_folder_is_one_line(tmp_path):
    one_line_error(haq("cost", "--csv", str(tmp_path / "nowhere" / "costs.csv")))


@pytest.mark.parametrize("yaml_text, message", [
    ("episodes: 2.5\n", "SearchConfig.episodes must be an integer, got 2.5"),
    ("reward_scale: -1\n", "reward_scale must be a finite number > 0"),
    ("reward_scale: .nan\n", "reward_scale must be a finite number > 0"),
    ("seed: yes\n", "SearchConfig.seed must be an integer, got True"),
    ("agent: {actor_lr: fast}\n", "agent: AgentConfig.actor_lr must be a number, got 'fast'"),
])
def test_config_values_are_checked_by_type_and_range_naming_the_file(tmp_path, yaml_text, message):
    (tmp_path / "my.yaml").write_text(yaml_text)
    one_line_error(haq("search", "--config", str(tmp_path / "my.yaml"), "--out", str(tmp_path / "run")),
                   f"{tmp_path / 'my.yaml'}: ", message)
    assert not (tmp_path / "run").exists()


def write_png_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 12) -> Path:
    """A class-per-folder tree of small PNGs: each class a colour, with noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        base = np.zeros(3)
        base[c % 3] = 200
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.png")
    return root


def test_an_image_folder_is_split_and_decoded_at_the_models_input(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    from haq.data import load_dataset

    root = write_png_folder(tmp_path / "shapes")
    data = load_dataset("folder", root, size=16, channels=1)
    assert (len(data.train), len(data.val), len(data.test)) == (22, 7, 7)  # 36 images: 60 / 20 / 20, stratified
    assert data.num_classes == 3 and data.input_shape == (1, 16, 16) and data.name == "folder"
    assert set(data.train.labels.tolist()) == set(data.val.labels.tolist()) == set(data.test.labels.tolist()) == {0, 1, 2}
    # one channel is PIL's own grey of the decoded colour image
    rgb = load_dataset("folder", root, size=16, channels=3)
    grey = torch.from_numpy(np.array(Image.fromarray(rgb.train.images[0].permute(1, 2, 0).numpy()).convert("L")))
    assert torch.equal(data.train.images[0, 0], grey)
    with pytest.raises(ValueError, match="too few to split"):
        load_dataset("folder", write_png_folder(tmp_path / "tiny", classes=3, per_class=1), size=16)
    with pytest.raises(ValueError, match="the digits data set is shipped with the engine; --data-root .* is not read"):
        load_dataset("digits", root)


def test_search_on_a_folder_of_pngs_with_the_users_own_model_and_data_plugin(tmp_path):
    """The user's own network (module:factory) on a folder of PNGs, and a data set from the user's
    own loader (module:function), each through `haq search` as a user runs it."""
    root = write_png_folder(tmp_path / "pngs")
    pkg = tmp_path / "my_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "from torch import nn\n\n"
        "def build(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, padding=1),\n"
        "                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n\n"
        "build.input_shape = (3, 16, 16)\n")
    (pkg / "data.py").write_text(
        "from haq.data import load_image_folder\n\n"
        "def load(data_root, input_shape, **kwargs):\n"
        "    channels, size, _ = input_shape\n"
        "    return load_image_folder(data_root, size=size, channels=channels, val_fraction=0.25, **kwargs)\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("episodes: 3\nwarmup: 2\nquant: {calib_images: 16}\n")
    for dataset in ("folder", "my_pkg.data:load"):
        out = tmp_path / f"run-{dataset.split(':')[0]}"
        done = haq("search", "--config", str(cfg), "--dataset", dataset, "--data-root", str(root), "--model",
                   "my_pkg.nets:build", "--out", str(out), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "best policy" in done.stdout and (out / "summary.json").is_file()
        assert "untrained" in done.stderr  # said once: no weights were given for the user's network
    # the run folder names code (its model and data plugins): resuming it is the user's explicit choice
    refused = haq("search", "--resume", str(tmp_path / "run-my_pkg.data"), cwd=tmp_path)
    one_line_error(refused, "names code to import (model: my_pkg.nets:build, dataset: my_pkg.data:load)")


def test_bad_policy_files_name_the_file_and_what_is_valid(tmp_path):
    (tmp_path / "list.json").write_text("[4, 4]")
    (tmp_path / "nolayer.csv").write_text("w_bits,a_bits\n4,4\n")
    (tmp_path / "frac.json").write_text('{"layers": [{"name": "features.0.0", "w_bits": 3.7, "a_bits": 4}]}')
    one_line_error(haq("cost", "--policy", str(tmp_path / "list.json")), f"{tmp_path / 'list.json'}: a policy is a "
                   "mapping {'layers': [{'name': ..., 'w_bits': ..., 'a_bits': ...}, ...]}, got list")
    one_line_error(haq("cost", "--policy", str(tmp_path / "nolayer.csv")),
                   f"{tmp_path / 'nolayer.csv'}: missing column(s) ['layer']")
    one_line_error(haq("cost", "--policy", str(tmp_path / "frac.json")),
                   "policy layer 'features.0.0': w_bits must be a whole number in 1..8, got 3.7")


def test_negative_split_sizes_are_refused(tmp_path):
    (tmp_path / "my.yaml").write_text("data: {n_train: -5}\n")
    one_line_error(haq("search", "--config", str(tmp_path / "my.yaml"), "--out", str(tmp_path / "run")),
                   "split sizes must be whole numbers >= 0 (data: n_train, n_val), got [-5, 350")
    assert not (tmp_path / "run").exists()
