"""The ablation table of results/quality from WORK_DIR's perplexity JSONs and reports.

    python results/quality/table.py WORK_DIR
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROWS = [("putri", "paper preset (`--method putri`)"), ("obs-rounds", "paper preset + 16 OBS rounds alone"),
        ("dense-target", "paper preset + dense-target least squares alone"),
        ("dense-target-refit", "paper preset + dense-target least squares + final FFN refit"),
        ("dense-fit", "`putri-dense-fit` (all closed-form changes)"),
        ("raw-dense-fit", "`putri-dense-fit`, raw-text calibration (`wikitext2:valid-raw,tinystories:train-2mib,c4`)"),
        ("dense-fit-rec2", "`putri-dense-fit` + block reconstruction (2 epochs, lr 1e-3)"),
        ("raw-dense-fit-rec2", "raw-text `putri-dense-fit` + block reconstruction (2 epochs, lr 1e-3)"),
        ("dense-fit-rec2-recover", "`putri-dense-fit` + reconstruction + `recover` (24 min)"),
        ("dense-fit-rec2-recover-bf16", "`putri-dense-fit` + reconstruction + `recover --autocast bf16` (23.5 min)"),
        ("search-greedy-trade", "`search --start PUTRI` (paper preset's widths, trading attention and FFN, 64 × 512)"),
        ("putri-rec2", "paper preset + block reconstruction (2 epochs, lr 1e-3)"),
        ("search-rec2", "searched + block reconstruction (2 epochs, lr 1e-3)"),
        ("search-rec2-recover-bf16", "searched + reconstruction + `recover --autocast bf16` (23.5 min)"),
        ("search-rec2-recover-bf16-ts", "the same recovery on TinyStories + WikiText-2 valid only (no C4)"),
        ("search-rec2-recover-bf16-ts2", "the same recovery on 2/3 TinyStories + 1/3 WikiText-2 valid (no C4)"),
        ("search-rec2-recover-bf16-ts2-seed1", "the same recovery, seed 1"),
        ("search-rec2-raw256", "searched + block reconstruction on 256 raw windows (2 epochs, lr 1e-3)"),
        ("search-rec8-raw64", "searched + block reconstruction on 64 raw windows (8 epochs, lr 1e-3)"),
        ("search-widths-rec4-raw64-lr3e-3", "searched widths re-pruned + reconstruction on 64 raw windows (4 epochs, "
         "lr 3e-3)"),
        ("search-widths-rec4-raw64-lr3e-3-recover", "+ `recover --autocast bf16` (20 min; 2/3 TinyStories)"),
        ("search-widths-rec4-raw64-lr3e-3-recover-seed1", "the same recovery, seed 1"),
        ("putri-rec2-b2", "paper preset + block reconstruction (2 epochs, lr 1e-3, 2 windows per step; run's default "
         "stop 35)"),
        ("putri-rec4-b2-raw", "paper preset + block reconstruction on the raw text of the same corpora (4 epochs, lr "
         "1e-3, 2 windows per step; run's default since stop 36)"),
        ("putri-rec4-b2-raw-recover", "+ `recover --autocast bf16` (20 min; 2/3 TinyStories)"),
        ("putri-rec4-b2-raw-recover-seed1", "the same recovery, seed 1")]


def seconds_and_rss(log: Path) -> tuple[str, str]:
    if not log.is_file():
        return "", ""
    text = log.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return (wall.group(1) if wall else "", f"{int(rss.group(1)) / 1024:,.0f}" if rss else "")


def main(work: Path) -> None:
    ppl = {}
    for f in work.glob("full-*-*.json"):
        d = json.loads(f.read_text())
        name, corpus = f.stem.removeprefix("full-").rsplit("-", 1)
        ppl[name, corpus] = d["perplexity"]
    base = {c: ppl.get(("putri", c)) for c in ("wikitext2", "tinystories")}
    print("| row | WikiText-2 (589 × 512) | ÷ paper | TinyStories (378 × 512) | ÷ paper | wall time | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, label in ROWS:
        cells = []
        for c in ("wikitext2", "tinystories"):
            v = ppl.get((name, c))
            cells += [f"{v:.2f}" if v else "–", f"{v / base[c]:.3f}" if v and base[c] else "–"]
        wall, rss = seconds_and_rss(work / f"{name}.log")
        print(f"| {label} | " + " | ".join(cells) + f" | {wall or '–'} | {rss or '–'} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
