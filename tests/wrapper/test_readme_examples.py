"""The README's "Use it from Python" examples run as written, on a tiny random model saved to a folder."""

import re
from pathlib import Path

import pytest

from tiny_models import tiny_model

README = Path(__file__).resolve().parents[2] / "README.md"
MARK = "<!-- run by tests/wrapper/test_readme_examples.py -->"


def _examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(re.escape(MARK) + r"\n```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2, "README should hold the Trainer and the plain-loop example"
    return blocks


@pytest.mark.parametrize("index", [0, 1], ids=["trainer", "plain_loop"])
def test_readme_example_runs(index, tmp_path, monkeypatch, one_thread):
    tiny_model("llama").save_pretrained(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    code = _examples()[index].replace('"path/to/model"', repr(str(tmp_path / "model")))
    namespace: dict = {}
    exec(compile(code, f"README example {index}", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["wrapped"] is not None
    if index == 0:
        assert (tmp_path / "out" / "final" / "foresight_heads.safetensors").is_file()
