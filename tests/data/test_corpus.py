"""Corpora from local files (txt/jsonl/parquet) and built-in names, and the perplexity protocol."""

from __future__ import annotations

import json
import math

import pytest
import torch

from putri_export.data import load_corpus, windows
from putri_export.errors import PutriError
from putri_export.eval import perplexity


def test_builtin_names_resolve_to_shared_copies():
    wiki = load_corpus("wikitext2")
    assert wiki.source.endswith("wikitext-2-raw/wiki.test.raw")
    assert wiki.documents[0] == " = Robert Boulter = "
    assert load_corpus("wikitext2:valid").source.endswith("wikitext-2/valid.txt")
    assert load_corpus("tinystories:train").source.endswith("tinystories/train-head.txt")


def test_the_cleaner_calibration_corpora():
    raw = load_corpus("wikitext2:valid-raw")
    assert raw.source.endswith("wikitext-2-raw/wiki.valid.raw") and "<unk>" not in raw.text
    assert "<unk>" in load_corpus("wikitext2:valid").text  # why the raw split exists
    stories = load_corpus("tinystories:train-2mib")
    assert "<|endoftext|>" not in stories.text and len(stories.text) > 1_900_000  # separators dropped, text kept
    c4 = load_corpus("c4")
    assert c4.source.endswith("c4-en-train-00000-first1000.jsonl") and len(c4.documents) == 1000
    assert c4.documents[0].startswith("Beginners BBQ Class")


def test_local_formats_agree(tmp_path):
    docs = ["First document.", "Second one, longer.", "Third."]
    (tmp_path / "a.txt").write_text("\n".join(docs[:2]) + "\n\n" + docs[2] + "\n")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs}), tmp_path / "a.parquet")
    for suffix in ("txt", "jsonl", "parquet"):
        assert load_corpus(str(tmp_path / f"a.{suffix}")).documents == docs


def test_missing_text_column(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(PutriError, match="no record has a field 'text' \\(fields: body\\)"):
        load_corpus(str(tmp_path / "b.jsonl"))


def test_windows_are_non_overlapping_and_capped():
    ids = torch.arange(100)
    w = windows(ids, 10, max_windows=3)
    assert w.shape == (3, 10) and torch.equal(w.flatten(), ids[:30])
    assert windows(ids, 30).shape == (3, 30)


def test_perplexity_of_a_known_distribution():
    """A model that always predicts uniform over V has perplexity exactly V."""
    vocab = 7

    def uniform(batch):
        return torch.zeros(*batch.shape, vocab)

    result = perplexity(uniform, torch.randint(0, vocab, (50,)), seq_len=10, progress=False)
    assert result.windows == 5 and result.predicted_tokens == 45
    assert math.isclose(result.perplexity, vocab, rel_tol=1e-6)  # float32 log-softmax
