"""``util.machine.git_commit``: the commit a report names, from a clone or a ``git worktree``."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from userlm_local.util.machine import git_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(cwd, *args) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_a_clone_a_worktree_and_packed_refs(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "f").write_text("x")
    git(repo, "add", "f")
    git(repo, "commit", "-qm", "one")
    git(repo, "worktree", "add", "-q", str(tmp_path / "wt"), "-b", "side")
    (tmp_path / "wt" / "g").write_text("y")
    git(tmp_path / "wt", "add", "g")
    git(tmp_path / "wt", "commit", "-qm", "two")
    main_head, side_head = git(repo, "rev-parse", "main"), git(repo, "rev-parse", "side")
    assert main_head != side_head
    assert git_commit(repo) == main_head[:12]
    assert git_commit(tmp_path / "wt") == side_head[:12]
    git(repo, "pack-refs", "--all")  # the branches move into packed-refs
    assert git_commit(repo) == main_head[:12] and git_commit(tmp_path / "wt") == side_head[:12]
    assert git_commit(tmp_path / "nothing") is None
