"""tools/prune_quality.py: the table's run-default cells prune as `putri-export run` does by default."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from putri_export.run import Recipe

TOOL = Path(__file__).resolve().parents[2] / "tools" / "prune_quality.py"


def _table(stories_dir, out: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(TOOL), "--model", str(stories_dir), "--methods", "putri", "run-default",
                           "--sparsities", "0.5", "--calib", "tinystories:train", "--calib-samples", "8",
                           "--calib-len", "64", "--attn-len", "64", "--eval-windows", "2", "--seq-len", "64",
                           "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_run_default_cells_follow_runs_recipe_and_reconstruct(stories_dir, tmp_path):
    out = tmp_path / "table"
    _table(stories_dir, out)
    paper = json.loads((out / "cells" / "putri-0.50.json").read_text())
    cell = out / "cells" / "run-default-0.50.json"
    default = json.loads(cell.read_text())
    recipe = Recipe(calib="tinystories:train")  # the calibration the table is made with
    assert paper["settings"] == {"method": "putri", "align": 1, "reconstruct_epochs": 0}
    assert default["settings"] == {"method": recipe.method, "align": recipe.align,
                                   **asdict(recipe.run_reconstruction(streamed=False))}
    assert default["settings"]["reconstruct_epochs"] > 0
    error = default["reconstruction_block_error"]
    assert error["after"] < error["before"]
    assert "reconstruction_block_error" not in paper
    table = (out / "table.md").read_text()
    assert "| run-default |" in table and "| putri |" in table and "block reconstruction" in table
    # a run-default cell made under other defaults is redone, the paper preset's kept
    cell.write_text(json.dumps({**default, "settings": {**default["settings"], "reconstruct_batch": 8}}))
    write = [sys.executable, str(TOOL), "--model", str(stories_dir), "--out", str(out), "--table-only"]
    subprocess.run(write, check=True, capture_output=True, timeout=300)  # the table marks it until it is redone
    table = (out / "table.md").read_text()
    assert table.count("†") == 3 and '"reconstruct_batch": 8' in table, table
    proc = _table(stories_dir, out)
    assert "run-default-0.50.json was made with other settings" in proc.stdout
    assert "putri-0.50.json was made" not in proc.stdout
    assert json.loads(cell.read_text())["settings"] == default["settings"]
    assert "†" not in (out / "table.md").read_text()
