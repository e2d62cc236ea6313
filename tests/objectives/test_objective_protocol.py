"""The objective protocol: a fifth objective, defined and registered here, goes through training, FLOPs, the
star-graph results and report, and the run comparison without any change outside ``objectives/``; and the four
built-in objectives answer the protocol as the code that used to switch on their names did."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from foresight.cli.main import main
from foresight.compare import load_runs, table
from foresight.model import ModelConfig
from foresight.objectives import REGISTRY, drafting_objectives, objective_label, register
from foresight.objectives.base import IGNORE_INDEX, Compute, LossOutput, Objective, shifted_labels
from foresight.train.flops import flops_per_token
from foresight.train.lm import TrainableLM

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class SkipConfig:
    weight: float | list = 1.0
    gap: int = 1  # predict x[t + 1 + gap]


class Skip(Objective):
    """A toy objective: an own untied head predicts the token ``gap`` places past the next one."""

    name = "skip"

    def __init__(self, cfg: SkipConfig, model_cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.head = nn.Linear(model_cfg.hidden_size, model_cfg.vocab_size, bias=False)

    @classmethod
    def paper_label(cls, spec: dict) -> str:
        return f"Skip-{spec.get('gap', SkipConfig.gap)}"

    @property
    def lookahead(self) -> int:
        return 1 + self.cfg.gap

    def compute(self) -> Compute:
        return Compute(head_uses=1)

    def count(self, batch) -> torch.Tensor:
        return (shifted_labels(batch, self.cfg.gap) != IGNORE_INDEX).sum()

    def forward(self, out, batch, model) -> LossOutput:
        labels = shifted_labels(batch, self.cfg.gap)  # (B, T)
        logits = self.head(out.hidden)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
        return LossOutput(loss, self.count(batch))


@pytest.fixture
def skip_registered():
    register(SkipConfig, Skip)
    yield
    del REGISTRY["skip"]


def test_register_refuses_a_taken_name(skip_registered):
    with pytest.raises(ValueError, match="already registered"):
        register(SkipConfig, Skip)


def test_a_fifth_objective_trains_counts_flops_and_reports(skip_registered, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs/stargraph/smoke.yaml").read_text())
    recipe["runs"] = {"skip": [{"name": "ntp"}, {"name": "skip", "gap": 2, "weight": 0.5}]}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(recipe))

    code = main(["stargraph", "run", "toy.yaml", "--set", "train.steps=4", "--set", "train.eval_every=2",
                 "--set", "train.log_every=1", "--results", "results", "--out", "runs"])
    out, err = capsys.readouterr()
    assert code == 0, err
    cells = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json")]
    assert [c["objective"] for c in cells] == ["Skip-2"]
    assert [len(c["evals"]) for c in cells] == [2]
    records = [json.loads(line) for line in (tmp_path / "runs/skip/metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(r["skip_loss"] > 0 and r["ntp_loss"] > 0 for r in train)

    # FLOPs: the toy head is one more V x D head application per token, nothing else.
    cfg = ModelConfig(vocab_size=14, hidden_size=8, n_layers=2, n_heads=2, intermediate_size=16, max_seq_len=16)
    ntp = TrainableLM(cfg, [{"name": "ntp"}])
    skip = TrainableLM(cfg, [{"name": "ntp"}, {"name": "skip"}])
    assert flops_per_token(skip, 10) - flops_per_token(ntp, 10) == 6 * 14 * 8
    assert skip.lookahead == 2

    code = main(["stargraph", "report", "results"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "| Skip-2 |" in (tmp_path / "results/README.md").read_text()

    text = table(load_runs([tmp_path / "runs"]))
    assert "train skip" in text.splitlines()[0] and "train ntp" in text.splitlines()[0]
    assert "skip" not in drafting_objectives()  # it declares no drafter, so speculative decoding skips it


def test_the_built_in_objectives_answer_the_protocol():
    assert objective_label([{"name": "ntp"}]) == "NTP"
    assert objective_label([{"name": "ntp"}, {"name": "top"}]) == "TOP"
    assert objective_label([{"name": "ntp"}, {"name": "mtp"}]) == "MTP-4"  # MTPConfig's default n
    assert objective_label([{"name": "ntp"}, {"name": "dsmtp"}]) == "DS-MTP (top_paper)"
    assert objective_label([{"name": "ntp"}, {"name": "dsmtp", "depth": 3}, {"name": "top"}]) == "DS-MTP-4 + TOP"
    assert objective_label([{"name": "mtp", "n": 2}]) == "MTP-2 (no NTP)"
    assert drafting_objectives() == ["mtp", "dsmtp", "top"]  # --speculative auto: MTP, else DS-MTP, else TOP
    assert [n for n, (_, cls) in REGISTRY.items() if cls.next_token] == ["ntp"]
    assert {n: cls.head_metric for n, (_, cls) in REGISTRY.items()} == {
        "ntp": None, "top": None, "mtp": "mtp_head", "dsmtp": "dsmtp_depth"}
    cfg = ModelConfig(vocab_size=11, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16, max_seq_len=16)
    lm = TrainableLM(cfg, [{"name": "ntp"}, {"name": "top"}, {"name": "mtp", "n": 3}, {"name": "dsmtp", "depth": 2}])
    block = sum(p.numel() for p in lm.model.layers[0].parameters())
    proj = 2 * 8 * 8 + 8 + 2 * 8  # eh_proj (with the top_paper bias) and the two input norms
    assert lm.objectives["ntp"].compute() == Compute()
    assert lm.objectives["top"].compute() == Compute(head_uses=1)
    assert lm.objectives["mtp"].compute() == Compute(2 * block, 2, 2)
    assert lm.objectives["dsmtp"].compute() == Compute(2 * (block + proj), 2, 2)
