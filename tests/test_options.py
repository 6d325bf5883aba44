"""Flags made from settings dataclasses: defaults, choices and booleans written once."""

from __future__ import annotations

import argparse

import pytest

from putri_export.options import add_options, given_options
from putri_export.prune import PruneSettings
from putri_export.recover import RecoverSettings
from putri_export.run import Recipe
from putri_export.search import SearchSettings


def _parse(cls, *argv: str, **kw) -> dict:
    parser = argparse.ArgumentParser()
    add_options(parser, cls, **kw)
    return given_options(parser.parse_args(list(argv)), cls)


def test_only_given_flags_come_back_typed():
    assert _parse(PruneSettings) == {}
    assert _parse(PruneSettings, "--sparsity", "0.3", "--no-o-refit", "--attn-len", "64") == {
        "sparsity": 0.3, "o_refit": False, "attn_len": 64}
    assert PruneSettings(**_parse(PruneSettings, "--method", "flap")).method == "flap"
    assert _parse(SearchSettings, "--stage-samples", "2,4") == {"stage_samples": (2, 4)}
    assert _parse(Recipe, "--formats", "gguf", "--bench-depths", "0,512", "--search", skip=("model",)) == {
        "formats": ["gguf"], "bench_depths": [0, 512], "search": True}


def test_choices_come_from_the_settings(capsys):
    with pytest.raises(SystemExit):
        _parse(PruneSettings, "--method", "magnitude")
    assert "invalid choice" in capsys.readouterr().err


def test_every_setting_has_a_flag_and_help():
    for cls in (PruneSettings, SearchSettings, Recipe, RecoverSettings):
        parser = argparse.ArgumentParser()
        add_options(parser, cls)
        flags = {a.dest for a in parser._actions if a.dest != "help"}
        mappings = {"search_options", "recover_options"}  # recipe files only
        fields = set(cls.__dataclass_fields__) - mappings
        assert fields <= flags | mappings, fields - flags
        assert all(a.help and "(default:" in a.help for a in parser._actions if a.dest in fields)


def test_every_subcommand_prints_its_help():
    """argparse %-formats help text: a literal % in a setting's help (e.g. "40%") broke --help of every command
    that took it."""
    from putri_export.cli.parser import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"prune", "search", "eval", "export", "verify"} <= set(commands)
    for name, sub in commands.items():
        assert "usage:" in sub.format_help(), name


def test_block_reconstruction_is_declared_once_and_listed_under_one_heading():
    """prune, search and run inherit block reconstruction's flags from one ``ReconstructionSettings`` (run with its
    own epochs default), each shows them in one ``--help`` group, and ``reconstruction()`` hands them over whole."""
    from dataclasses import asdict, fields

    from putri_export.prune.settings import RECONSTRUCTION, ReconstructionSettings

    names = [f.name for f in fields(ReconstructionSettings)]
    for cls in (PruneSettings, SearchSettings, Recipe):
        parser = argparse.ArgumentParser()
        add_options(parser, cls)
        group = next(g for g in parser._action_groups if g.title == RECONSTRUCTION)
        assert [a.dest for a in group._group_actions] == names, cls
    assert Recipe().reconstruct_epochs is None and PruneSettings().reconstruct_epochs == 0
    recipe = Recipe(reconstruct_lr=2e-3, reconstruct_batch=4, reconstruct_samples=32)
    handed = asdict(recipe.reconstruction(epochs=3))
    assert handed == {"reconstruct_epochs": 3, "reconstruct_lr": 2e-3, "reconstruct_batch": 4,
                      "reconstruct_calib": None, "reconstruct_samples": 32}
    assert PruneSettings(**handed).reconstruction() == recipe.reconstruction(epochs=3)
