"""Shared fixtures: the real assets in ../shared (never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# As the CLI subprocesses get it (helpers.run_cli): no test may reach for the hub. Set before any Hugging Face
# import reads it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PUTRI_EXPORT_SHARED", REPO.parent / "shared"))
STORIES = SHARED / "models" / "stories260K"


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    if not (STORIES / "config.json").is_file():
        pytest.fail(f"stories260K not found at {STORIES} (set PUTRI_EXPORT_SHARED)")
    return STORIES


@pytest.fixture(scope="session")
def stories(stories_dir):
    from putri_export.model import load_model

    return load_model(stories_dir)


@pytest.fixture(scope="session")
def tinystories_ids(stories):
    from putri_export.data import load_corpus, tokenize_corpus

    return tokenize_corpus(stories[1], load_corpus("tinystories"))


@pytest.fixture(scope="session")
def wikitext_ids(stories):
    from putri_export.data import load_corpus, tokenize_corpus

    return tokenize_corpus(stories[1], load_corpus("wikitext2"))


@pytest.fixture
def stories_copy(stories_dir):
    from helpers import fresh_stories

    return fresh_stories(stories_dir)


torch.manual_seed(0)
# `make test` runs two xdist workers on two cores: torch's default of one thread per core in each would
# oversubscribe them (a stories260K training step measured 8x slower at 2 threads beside a busy process than at 1).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
