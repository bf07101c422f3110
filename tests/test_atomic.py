"""What a reader trusts appears whole: a folder replaced by one rename after another, and undone when
a kill falls between them."""

from __future__ import annotations

import pytest

from gpthf.atomic import move_into_place, restore_set_aside, set_aside_path


def folder(path, text: str):
    path.mkdir()
    (path / "a").write_text(text)
    return path


def test_a_folder_replaces_an_older_one_and_a_kill_between_the_renames_is_undone(tmp_path):
    target = folder(tmp_path / "shard", "old")
    move_into_place(folder(tmp_path / "shard.new", "new"), target)
    assert (target / "a").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["shard"]

    target.rename(set_aside_path(target))  # killed after the older folder was set aside
    restore_set_aside(tmp_path)
    assert (target / "a").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["shard"]

    staged = folder(tmp_path / "shard.new", "other")
    with pytest.raises(FileExistsError):
        move_into_place(staged, target, replace=False)  # an existing one wins
    assert (target / "a").read_text() == "new" and (staged / "a").read_text() == "other"
