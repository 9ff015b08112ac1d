"""Secret files: private mode checked with the chmod to run, one line, written 0600."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.secret_file import mode_problem, read_secret_file, write_file, write_private

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        (0o600, None),
        (0o400, None),
        (0o700, None),
        (0o644, "other users"),
        (0o604, "other users"),
        (0o640, "its group"),
        (0o660, "its group"),
    ],
)
def test_mode_problem_allows_only_the_owner(mode: int, problem: str | None) -> None:
    found = mode_problem(stat.S_IFREG | mode)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and f"{mode:04o}" in found


def test_write_private_creates_0600_even_over_an_open_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "s3cret-value\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secret_file(path, what="test") == "s3cret-value"


def test_a_file_others_may_read_is_refused_with_the_chmod_and_without_the_secret(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token"
    write_private(path, "s3cret-value\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        read_secret_file(path, what="setting 'read_token'", setting="read_token")
    message = str(caught.value)
    assert f"chmod 600 {path}" in message and "'read_token'" in message
    assert "s3cret-value" not in message
    assert caught.value.setting == "read_token"


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "empty"), ("\n", "empty"), ("a\nb\n", "one line"), (" padded\n", "spaces")],
)
def test_an_empty_or_multi_line_secret_is_refused(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "token"
    write_private(path, text)
    with pytest.raises(ConfigError, match=why):
        read_secret_file(path, what="test")


def test_one_trailing_newline_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write_private(path, "abc\r\n")
    assert read_secret_file(path, what="test") == "abc"


def test_a_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope"):
        read_secret_file(tmp_path / "nope", what="test")


def test_write_file_that_fails_leaves_the_old_file_and_nothing_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "manifest.sig"
    target.write_bytes(b"old")

    def disk_full(src: object, dst: object) -> None:  # the fault: the rename fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_file(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.sig"]
    monkeypatch.undo()
    write_file(target, b"new", 0o644)
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.sig"
    ]
