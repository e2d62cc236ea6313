"""Continued training: ``text.init_from`` starts every run from a pretrained (Hugging Face) trunk, adding fresh
TOP / MTP heads — the TOP paper's continued-training setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from foresight.cli.main import main
from foresight.data.demo_corpus import demo_files
from foresight.data.prepare import PrepareConfig, prepare
from foresight.data.sources import Documents
from foresight.data.tokenizer import train_tokenizer
from foresight.hf import export_lm
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("init_from")
    files = demo_files(max_bytes=200_000)
    tok = train_tokenizer(Documents(files), 320)
    prepare(Documents(files, text_unit="paragraph"), tok, root / "data", PrepareConfig(val_fraction=0.1),
            progress=False)
    torch.manual_seed(3)
    source = TrainableLM(ModelConfig(vocab_size=384, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                     intermediate_size=64, tie_embeddings=True), [{"name": "ntp"}])
    export_lm(source, [{"name": "ntp"}], root / "hf")
    return root, source


def _recipe(root: Path, init_from: str) -> Path:
    recipe = {
        "task": "text",
        "text": {"data": str(root / "data"), "seq_len": 16, "val_batches": 1, "init_from": init_from},
        # ignored: the pretrained model's shape wins (but parsed at load like any model section, so it must be a
        # valid one: 96 / 4 heads)
        "model": {"hidden_size": 96},
        "train": {"steps": 1, "batch_size": 2, "lr": 1e-12, "min_lr": 0.0, "warmup_steps": 0, "device": "cpu"},
        "runs": {"top": [{"name": "ntp"}, {"name": "top", "window": 8}]},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_runs_start_from_the_pretrained_trunk_with_fresh_heads(setup, capsys):
    root, source = setup
    out = root / "runs"
    assert main(["train", str(_recipe(root, str(root / "hf"))), "--out", str(out)]) == 0, capsys.readouterr().err
    lm, _ = TrainableLM.from_checkpoint(out / "top")
    assert lm.model.cfg.hidden_size == 32 and lm.model.cfg.n_kv_heads == 2 and lm.model.cfg.tie_embeddings
    assert "top" in lm.objectives
    for (name, p), q in zip(lm.model.named_parameters(), source.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)  # one step at lr 1e-12 moves nothing
    assert "init from" in capsys.readouterr().out


def test_a_vocabulary_too_small_for_the_data_is_one_line(setup, capsys, tmp_path):
    root, _ = setup
    small = TrainableLM(ModelConfig(vocab_size=100, hidden_size=16, n_layers=1, n_heads=2), [{"name": "ntp"}])
    export_lm(small, [{"name": "ntp"}], tmp_path / "small")
    assert main(["train", str(_recipe(root, str(tmp_path / "small"))), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vocabulary (100) is smaller" in err[0]
