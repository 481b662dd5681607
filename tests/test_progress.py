"""Progress bars: on a terminal only; a log or a pipe gets the items and no output at all."""

from __future__ import annotations

from prunekit.progress import track


def test_enabled_track_writes_nothing_when_output_is_not_a_terminal(capsys):
    assert list(track(range(5), "working", True)) == [0, 1, 2, 3, 4]
    assert list(track(iter("ab"), "working", True, total=2)) == ["a", "b"]
    out, err = capsys.readouterr()
    assert out == "" and err == ""
