"""The block runner every method streams through: it reproduces the model's forward, its mask is causal,
and the sequential loop gives visitors the right streams."""

from __future__ import annotations

import pytest
import torch
from helpers import fresh_stories

from putri_export.data import load_calibration
from putri_export.model import keep_ffn_neurons, keep_kv_groups
from putri_export.prune.stages import SliceEvaluator
from putri_export.prune.stream import BlockRunner, ChannelMask, capture_inputs, inputs_of, sequential


@pytest.fixture(scope="module")
def ids(stories):
    return load_calibration(stories[1], "tinystories:train", 4, 64).ids


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_blocks_reproduce_the_model_forward_in_any_batch_size(stories, ids):
    model = stories[0]
    for batch_size in (1, 3):
        runner = BlockRunner(model, batch_size)
        torch.testing.assert_close(runner.logits(runner.blocks(runner.embed(ids))), _logits(model, ids),
                                   rtol=0, atol=1e-5)


def test_the_mask_is_causal(stories, ids):
    runner = BlockRunner(stories[0])
    x = runner.embed(ids[:1])
    y = x.clone()
    y[:, -1] += 1.0
    a, b = runner.block(runner.layers[0], x), runner.block(runner.layers[0], y)
    assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])


def test_sequential_visits_each_sublayer_with_its_input_stream(stories, ids):
    model = stories[0]
    runner = BlockRunner(model, 2)
    seen = []

    def attention(l, x):
        seen.append(("attn", l, x))

    def ffn(l, h):
        seen.append(("ffn", l, h))
        return h if l == 1 else None  # block 1: the FFN is skipped by returning its input stream

    blocks = []
    out = sequential(runner, runner.embed(ids), attention=attention, ffn=ffn,
                     after_block=lambda l, x_in, x_out: blocks.append((l, x_in, x_out)), progress=False)
    assert [(kind, l) for kind, l, _ in seen] == [(k, l) for l in range(5) for k in ("attn", "ffn")]
    x = runner.embed(ids)
    for l, layer in enumerate(runner.layers):
        torch.testing.assert_close(seen[2 * l][2], x)  # attention sees the block input
        h = runner.attention(layer, x)
        torch.testing.assert_close(seen[2 * l + 1][2], h)  # the FFN sees the stream after attention
        x = h if l == 1 else runner.ffn(layer, h)
        torch.testing.assert_close(blocks[l][2], x)
    torch.testing.assert_close(out, x)


def test_capture_sees_every_row_and_removes_its_hook(stories, ids):
    model = stories[0]
    runner = BlockRunner(model, 3)
    layer = runner.layers[2]
    h = runner.attention(layer, runner.embed(ids))
    rows = inputs_of(layer.mlp.down_proj, lambda: runner.ffn(layer, h))
    assert rows.shape == (ids.numel(), model.config.intermediate_size_per_layer[2])
    assert not layer.mlp.down_proj._forward_pre_hooks
    count = []
    with capture_inputs(layer.mlp.down_proj, lambda r: count.append(len(r))):
        runner.ffn(layer, h)
    assert sum(count) == ids.numel() and len(count) == 2  # two batches of 3 and 1 samples


def test_channel_mask_equals_removing_the_head_group(stories_dir, ids):
    masked, removed = fresh_stories(stories_dir), fresh_stories(stories_dir)
    mask = ChannelMask(masked.model.layers[1].self_attn.o_proj)
    width = 2 * masked.config.head_dim  # 2 query heads per KV head
    mask.mask[1 * width: 2 * width] = 0
    keep_kv_groups(removed, 1, [0, 2, 3])
    torch.testing.assert_close(_logits(masked, ids), _logits(removed, ids), rtol=0, atol=1e-5)
    runner = BlockRunner(masked, 2)
    evaluator = SliceEvaluator(runner, ids, {1: mask})
    assert runner.lm_loss(evaluator.final, ids) == pytest.approx(evaluator.loss())


def test_runner_follows_surgery_of_the_model(stories_dir, ids):
    model = fresh_stories(stories_dir)
    runner = BlockRunner(model)
    keep_ffn_neurons(model, 3, range(10))
    keep_kv_groups(model, 0, [])
    torch.testing.assert_close(runner.logits(runner.blocks(runner.embed(ids))), _logits(model, ids),
                               rtol=0, atol=1e-5)
