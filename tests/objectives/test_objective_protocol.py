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
from foresight.objectives.wrapped import OnParts
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
        "ntp": None, "top": None, "mtp": "mtp_head", "dsmtp": "dsmtp_depth", "fsp": None, "nextlat": None,
        "mutor": None}
    cfg = ModelConfig(vocab_size=11, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16, max_seq_len=16)
    lm = TrainableLM(cfg, [{"name": "ntp"}, {"name": "top"}, {"name": "mtp", "n": 3}, {"name": "dsmtp", "depth": 2}])
    block = sum(p.numel() for p in lm.model.layers[0].parameters())
    proj = 2 * 8 * 8 + 8 + 2 * 8  # eh_proj (with the top_paper bias) and the two input norms
    assert lm.objectives["ntp"].compute() == Compute()
    assert lm.objectives["top"].compute() == Compute(head_uses=1)
    assert lm.objectives["mtp"].compute() == Compute(2 * block, 2, 2)
    assert lm.objectives["dsmtp"].compute() == Compute(2 * (block + proj), 2, 2)


# --- the optional capabilities: cached-head training, a ranking head, foresight.wrap --------------------------


def _tiny_llama(seed: int = 0):
    """A random two-layer Llama from a config (nothing downloaded), float32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("llama", vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                               initializer_range=0.3, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()


def test_a_fifth_objective_gets_one_line_refusals_by_default(skip_registered):
    """The toy declares none of the optional capabilities: each path that needs one says so in one line."""
    from cached_heads import TrunkCache, draft_accuracy, init_from_last_block, train_heads

    from foresight.errors import ForesightError
    from foresight.generate import top_draft_acceptance
    from foresight.wrapper import wrap

    cfg = ModelConfig(vocab_size=13, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16, max_seq_len=16)
    lm = TrainableLM(cfg, [{"name": "ntp"}, {"name": "skip"}])
    skip = lm.objectives["skip"]
    assert skip.cached_heads is False and skip.future_head() is None

    tokens = torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(0))
    cache = TrunkCache(torch.zeros(2, 5, 8), torch.zeros(2, 5, 8))
    vocab = torch.arange(13)
    refusal = "^objective 'skip' does not support training heads on cached trunk states$"
    for call in (lambda: init_from_last_block(lm, "skip"),
                 lambda: train_heads(lm, "skip", tokens, cache, vocab, steps=1, batch=2, lr=1e-3, first_target=0),
                 lambda: draft_accuracy(lm, "skip", tokens, cache, vocab, first_target=0),
                 lambda: skip.warm_start(lm.model),
                 lambda: list(skip.head_states(None, None, lm.model))):
        with pytest.raises(ForesightError, match=refusal):
            call()
    with pytest.raises(ForesightError, match=r"^objective 'ntp' does not support training heads"):
        init_from_last_block(lm, "ntp")  # NTP has no extra heads either
    with pytest.raises(ForesightError, match=r"^the model has no objective 'mtp' \(it has \['ntp', 'skip'\]\)$"):
        init_from_last_block(lm, "mtp")
    assert all(p.requires_grad for p in lm.model.parameters())  # refused before freezing anything

    with pytest.raises(ForesightError, match="no TOP head"):
        top_draft_acceptance(lm, tokens[:, :2], 3)

    with pytest.raises(ForesightError, match="^objective 'skip' does not support foresight.wrap$"):
        wrap(_tiny_llama(), [{"name": "ntp"}, {"name": "skip"}])


class Ranker(Skip):
    """The toy, opting in: its head ranks upcoming tokens (``future_head``) and it runs on a transformers model
    (``on_parts``), with no edit outside this file."""

    name = "ranker"

    def future_head(self):
        return self.head

    @classmethod
    def on_parts(cls, cfg, parts):
        return RankerOnParts(cfg, parts)


class RankerOnParts(OnParts, Ranker):
    """The toy on a transformers model: its head is built from the model's sizes; loss math inherited."""

    def __init__(self, cfg: SkipConfig, parts) -> None:
        Objective.__init__(self)
        self.cfg = cfg
        self.head = nn.Linear(parts.hidden_size, parts.vocab_size, bias=False)

    def head_module(self, parts) -> nn.Module:
        return self.head


@pytest.fixture
def ranker_registered():
    register(SkipConfig, Ranker)
    yield
    del REGISTRY["ranker"]


def test_a_fifth_objective_that_opts_in_drafts_and_wraps(ranker_registered):
    from foresight.generate import generate, top_draft_acceptance
    from foresight.wrapper import wrap

    # Drafting with its ranking head: the report counts what the head's top-k says against greedy decoding.
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=9, hidden_size=16, n_layers=2, n_heads=2, intermediate_size=32, init_std=0.5)
    lm = TrainableLM(cfg, [{"name": "ntp"}, {"name": "ranker"}]).eval()
    prompts = torch.randint(0, 9, (2, 3), generator=torch.Generator().manual_seed(2))
    report = top_draft_acceptance(lm, prompts, 5, 2)
    traj = generate(lm.model, prompts, 7)
    agree = [0, 0]
    with torch.no_grad():
        for t in range(2, 7):
            draft = lm.objectives["ranker"].head(lm.model.trunk(traj[:, : t + 1]).hidden[:, -1]).topk(2).indices
            agree = [a + int((draft[:, r] == traj[:, t + 1 + r]).sum()) for r, a in enumerate(agree)]
    assert report.positions == 10 and report.rank_agree == agree

    # foresight.wrap: its loss on the model's final hidden states, by hand.
    model = _tiny_llama(3)
    wrapped = wrap(model, [{"name": "ntp"}, {"name": "ranker", "gap": 2}])
    ids = torch.randint(0, 23, (2, 7), generator=torch.Generator().manual_seed(4))
    out = wrapped(ids, labels=ids)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[-1]  # (B, T, D), after the final norm
        logits = wrapped.heads["ranker"](hidden[:, :4])  # positions whose x[t + 3] exists
        want = F.cross_entropy(logits.flatten(0, 1), ids[:, 3:].flatten())
    torch.testing.assert_close(out.losses["ranker"].detach(), want, rtol=1e-5, atol=1e-6)
    assert wrapped.heads["ranker"] is wrapped.objectives["ranker"].head


# --- nothing outside objectives/ and hf/ switches on an objective's class or name ----------------------------

SRC = Path(__file__).resolve().parents[2] / "src" / "foresight"
BUILT_IN = ("ntp", "top", "mtp", "dsmtp")


def _switches(source: str) -> list[str]:
    """Where ``source`` names a concrete objective class or config (imported, referenced, isinstance-checked),
    imports from a concrete objective's module, or compares against / keys a table by a built-in objective name."""
    import ast

    import foresight.objectives.wrapped as wrapped

    classes = [REGISTRY[n] for n in BUILT_IN]
    names = {c.__name__ for pair in classes for c in pair}
    names |= {n for n, c in vars(wrapped).items()  # WrapNTP, ..., WrapDSMTPModule (not the OnParts protocol)
              if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == wrapped.__name__}
    modules = {cls.__module__ for _, cls in classes} | {wrapped.__name__}
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("foresight"):
            if node.module in modules:
                found.append(f"{line}: imports from {node.module}")
            found += [f"{line}: imports {a.name}" for a in node.names if a.name in names]
        elif isinstance(node, ast.Import):
            found += [f"{line}: imports {a.name}" for a in node.names if a.name in modules]
        elif isinstance(node, ast.Name) and node.id in names:
            found.append(f"{line}: names {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in names:
            found.append(f"{line}: names .{node.attr}")
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            found += [f"{line}: compares with {s.value!r}" for s in sides
                      if isinstance(s, ast.Constant) and s.value in BUILT_IN]
        elif isinstance(node, ast.Dict):
            found += [f"{line}: a table keyed by {k.value!r}" for k in node.keys
                      if isinstance(k, ast.Constant) and k.value in BUILT_IN]
        elif isinstance(node, ast.MatchValue) and isinstance(node.value, ast.Constant) and node.value.value in BUILT_IN:
            found.append(f"{line}: matches {node.value.value!r}")
    return found


def test_the_switch_finder_finds_each_kind_of_switch():
    snippet = '''
from foresight.objectives import MTP, build_objective
from foresight.objectives.top import MAX_SLOTS
import foresight.objectives.dsmtp
import foresight.objectives as o
from foresight.objectives.dsmtp import DSMTPConfig

def f(obj, spec):
    if isinstance(obj, o.TOP) or spec["name"] == "ntp":
        return {"mtp": 1}
    match spec["name"]:
        case "dsmtp":
            return 2
    return isinstance(obj, WrapNTP)
'''
    assert sorted(_switches(snippet)) == sorted([
        "2: imports MTP", "3: imports from foresight.objectives.top", "4: imports foresight.objectives.dsmtp",
        "6: imports from foresight.objectives.dsmtp", "6: imports DSMTPConfig", "9: names .TOP",
        "9: compares with 'ntp'", "10: a table keyed by 'mtp'", "12: matches 'dsmtp'", "14: names WrapNTP"])
    assert _switches("from foresight.objectives import REGISTRY, Objective\nx = obj.next_token\n") == []


def test_no_module_outside_objectives_and_hf_switches_on_an_objective():
    """Item 1 of issue 12: adding an objective touches ``objectives/`` (and its tests) only."""
    checked, found = 0, []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] in ("objectives", "hf"):
            continue
        checked += 1
        found += [f"{rel}:{hit}" for hit in _switches(path.read_text())]
    assert checked > 50
    assert found == []
