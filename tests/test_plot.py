"""``plot.figure``: the one way reports write a figure: a PNG at ``path`` when the block ends, nothing if it fails."""

from __future__ import annotations

import pytest

from foresight.plot import figure


def test_the_figure_is_written_when_the_block_ends(tmp_path):
    path = tmp_path / "sub" / "f.png"
    with figure(path, 2, 3, (2.0, 1.5)) as (fig, axes):
        assert axes.shape == (2, 3)
        assert tuple(fig.get_size_inches()) == (6.0, 3.0)  # cols x width, rows x height
        axes[0, 0].plot([0, 1], [1, 0])
        assert not path.exists()  # not before the block ends
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]  # no temporary left


def test_a_failed_drawing_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        with figure(tmp_path / "f.png", 1, 1, (2.0, 2.0)):
            raise ValueError("bad data")
    assert list(tmp_path.iterdir()) == []
