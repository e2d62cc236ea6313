"""``eval_mode``: every submodule in eval inside the block, each one's own mode back after (errors included)."""

from __future__ import annotations

import pytest
from torch import nn

from foresight.modes import eval_mode


def _mixed() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(0.1), nn.Linear(2, 2)))
    model.train()
    model[1][0].eval()  # a part the caller keeps in eval
    return model


def test_every_module_is_in_eval_inside_and_its_own_mode_comes_back():
    model = _mixed()
    before = [m.training for m in model.modules()]
    assert before == [True, True, True, False, True]
    with eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before


def test_modes_come_back_after_an_error():
    model = _mixed()
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before
