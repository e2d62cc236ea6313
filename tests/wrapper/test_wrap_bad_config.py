"""A malformed config.json in a ``ForesightModel.save_pretrained`` folder is one line (issue 21): transformers'
reason as a ``ForesightError`` naming the folder, not its own exception type."""

from __future__ import annotations

import json

import pytest

from foresight import ForesightModel, wrap
from foresight.errors import ForesightError

from tiny_models import tiny_model

SPECS = [{"name": "ntp"}, {"name": "top", "window": 8}]


@pytest.mark.parametrize("config, fragment", [
    ([], "model_type"),
    ({"vocab_size": "x"}, "vocab_size"),
    (b"\xff", "not a valid JSON file"),
])
def test_malformed_config_json_of_a_wrapped_model(tmp_path, config, fragment):
    wrap(tiny_model("llama"), SPECS).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    if isinstance(config, bytes):
        path.write_bytes(config)
    elif isinstance(config, dict):
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    else:
        path.write_text(json.dumps(config))
    with pytest.raises(ForesightError) as err:
        ForesightModel.from_pretrained(tmp_path)
    assert "transformers cannot load the model" in str(err.value) and fragment in str(err.value)
    assert "\n" not in str(err.value)
