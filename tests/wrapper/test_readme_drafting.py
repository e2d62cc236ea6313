"""The README's "Drafting from Python" example runs as written, on a tiny random model saved to a folder."""

import re
from pathlib import Path

from tiny_models import tiny_model

README = Path(__file__).resolve().parents[2] / "README.md"
MARK = "<!-- run by tests/wrapper/test_readme_drafting.py -->"


def test_readme_drafting_example_runs(tmp_path, monkeypatch, one_thread, capsys):
    blocks = re.findall(re.escape(MARK) + r"\n```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "README should hold the drafting example"
    tiny_model("llama").save_pretrained(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    code = blocks[0].replace('"path/to/model"', repr(str(tmp_path / "model")))
    namespace: dict = {}
    exec(compile(code, "README drafting example", "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert "MTP heads" in out and "tokens per forward" in out and "'loss_mtp_head1'" in out
    assert namespace["stats"].steps > 0

