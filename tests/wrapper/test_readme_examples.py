"""The README's "Use it from Python" examples (Trainer, plain loop, With PEFT, With TRL) run as written, on a tiny
random model and tokenizer saved to a folder."""

import re
from pathlib import Path

import pytest

from tiny_models import tiny_model, tiny_tokenizer

README = Path(__file__).resolve().parents[2] / "README.md"
MARK = "<!-- run by tests/wrapper/test_readme_examples.py -->"


def _examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(re.escape(MARK) + r"\n```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 4, "README should hold the Trainer, plain-loop, PEFT and TRL examples"
    return blocks


@pytest.mark.parametrize("index", [0, 1, 2, 3], ids=["trainer", "plain_loop", "peft", "trl"])
def test_readme_example_runs(index, tmp_path, monkeypatch, one_thread):
    if index == 2:
        pytest.importorskip("peft")
    if index == 3:
        pytest.importorskip("trl")
    tiny_model("llama").save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = _examples()[index].replace('"path/to/model"', repr(str(tmp_path / "model")))
    # words the tiny tokenizer knows (w3 .. w36), so the texts are not all unknown tokens
    code = code.replace('"your first text", "another text"', '"w3 w4 w5 w6 w7", "w8 w9 w10"').replace('"your"', '"w3"')
    namespace: dict = {}
    exec(compile(code, f"README example {index}", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["wrapped"] is not None
    if index == 0:
        assert (tmp_path / "out" / "final" / "foresight_heads.safetensors").is_file()
    if index == 2:
        assert (tmp_path / "out" / "lora" / "adapter_model.safetensors").is_file()
        assert (tmp_path / "out" / "merged" / "model.safetensors").is_file()
        assert namespace["back"].unwrap().peft_config and namespace["peft_model"].print_trainable_parameters
    if index == 3:
        logged = namespace["trainer"].state.log_history[0]
        assert {"loss", "loss_ntp", "loss_top"} <= set(logged)
        assert (tmp_path / "out" / "sft" / "final" / "foresight_heads.safetensors").is_file()
