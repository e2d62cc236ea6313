"""The one run loop (``foresight.tasks.run``) and the task registry every entry point goes through."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from foresight.cli.main import main
from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate
from foresight.environment import describe
from foresight.hf import export_checkpoint, import_hf
from foresight.model import ModelConfig
from foresight.objectives import MTPConfig, ObjectiveSpec, parse_objectives
from foresight.tasks import TASKS
from foresight.tasks.run import RunHooks, result_record, train_run
from foresight.train.config import TrainConfig
from foresight.train.lm import TrainableLM
from foresight.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = StarGraphSpec(2, 3, 10)
SPECS = [{"name": "ntp"}, {"name": "mtp", "n": 2}]  # an objective with its own head: total_params > params


def _setup():
    data = StarGraphData(generate(SPEC, 16, 0), SPEC)
    model_cfg = ModelConfig(vocab_size=SPEC.vocab_size, hidden_size=16, n_layers=2, n_heads=2,
                            intermediate_size=24, max_seq_len=SPEC.seq_len + 1)
    train_cfg = TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=1, log_every=1, eval_every=2,
                            device="cpu", seed=5, compile=False, tensorboard=False)
    return data, model_cfg, train_cfg


def _evaluate(data):
    batch = data.batch(0, 8, 0)

    def evaluate(model):  # a number that moves with every weight: the mean log-partition of the logits
        with torch.no_grad():
            return {"logz": float(model(batch.input_ids).logsumexp(-1).mean())}
    return evaluate


def test_train_run_is_the_plain_seed_build_fit_loop(tmp_path):
    data, model_cfg, train_cfg = _setup()
    batch_fn = lambda step: data.batch(step, train_cfg.batch_size, train_cfg.seed)  # noqa: E731
    evaluate = _evaluate(data)
    seen = []

    def setup(lm):
        def hook(given):
            seen.append(given)  # the hook gets the trainable model (objectives and heads), not just the trunk
            return evaluate(given.model)
        return RunHooks(batch_fn=batch_fn, evaluate=hook, run_config={"extra": 1})

    run = train_run("r", SPECS, model_cfg, train_cfg, tmp_path / "a", raw={"task": "x"},
                    tokens_per_step=train_cfg.batch_size * SPEC.seq_len, setup=setup)

    # The reference: seed, build, Trainer, fit, written out by hand.
    torch.manual_seed(train_cfg.seed)
    lm = TrainableLM(model_cfg, SPECS)
    trainer = Trainer(lm, train_cfg, tmp_path / "b", batch_fn=batch_fn, eval_fn=evaluate,
                      run_config={"recipe": {"task": "x"}, "run": "r", "objectives": SPECS, "model": {}})
    evals = trainer.fit()

    assert seen and all(s is run.lm for s in seen)
    assert [e["step"] for e in run.evals] == [2, 3] and run.evals == evals
    for (name, a), (_, b) in zip(run.lm.state_dict().items(), lm.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert run.trainer.run_config["extra"] == 1 and run.trainer.run_config["run"] == "r"
    assert run.tokens == 3 * 4 * SPEC.seq_len

    record = result_record(run)
    heads = sum(p.numel() for n, p in lm.named_parameters() if not n.startswith("model."))
    assert heads > 0 and record["total_params"] == record["params"] + heads
    assert record["params"] == lm.model.num_parameters() and record["steps"] == 3 and record["seed"] == 5
    assert record["tokens"] == run.tokens and record["device"] == "cpu"
    provenance = {("device_name" if k == "device" else k) for k in describe("cpu")}
    assert provenance <= set(record) and record["torch"] == torch.__version__


def test_a_parsed_run_trains_and_its_checkpoint_stores_the_objectives_as_written(tmp_path):
    # A recipe hands the run loop its parsed objectives; checkpoints, exports and result records keep storing the
    # plain JSON form, which older versions wrote too and this version parses again when loading.
    data, model_cfg, train_cfg = _setup()
    parsed = parse_objectives(SPECS)
    assert [type(s) for s in parsed] == [ObjectiveSpec, ObjectiveSpec]
    assert parsed[1].config == MTPConfig(n=2) and parsed[1].written == {"name": "mtp", "n": 2}
    assert parse_objectives(parsed) == parsed  # parsed entries pass through, never parsed twice
    torch.manual_seed(1)
    from_parsed = TrainableLM(model_cfg, parsed)
    torch.manual_seed(1)
    from_dicts = TrainableLM(model_cfg, SPECS)  # library callers and checkpoints: plain dicts, the same parse
    for (name, a), (_, b) in zip(from_parsed.state_dict().items(), from_dicts.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert [o.cfg for o in from_parsed.objectives.values()] == [o.cfg for o in from_dicts.objectives.values()]

    setup = lambda lm: RunHooks(batch_fn=lambda step: data.batch(step, 4, 5))  # noqa: E731
    run = train_run("r", parsed, model_cfg, train_cfg, tmp_path / "run", raw={"task": "x"},
                    tokens_per_step=4 * SPEC.seq_len, setup=setup)
    record = result_record(run)
    assert record["objectives"] == SPECS and json.loads(json.dumps(record["objectives"])) == SPECS

    back, state = TrainableLM.from_checkpoint(tmp_path / "run")
    stored = state["config"]["objectives"]
    assert stored == SPECS and all(type(s) is dict for s in stored)
    for (name, a), (_, b) in zip(back.state_dict().items(), run.lm.state_dict().items(), strict=True):
        assert torch.equal(a, b), name

    export_checkpoint(tmp_path / "run", tmp_path / "hf", with_heads=True)
    imported, imported_specs, _ = import_hf(tmp_path / "hf")
    assert imported_specs == SPECS
    for (name, a), (_, b) in zip(imported.state_dict().items(), run.lm.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_the_stargraph_command_goes_through_the_task_registry(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setitem(TASKS, "stargraph", replace(TASKS["stargraph"], run=lambda recipe, runs, out, resume,
                        **options: calls.append((recipe.task, list(runs), out, resume, options))))
    code = main(["stargraph", "run", "smoke", "--runs", "top", "--seeds", "3,4", "--time-limit", "60",
                 "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    [(task, runs, out, resume, options)] = calls
    assert (task, runs, out, resume) == ("stargraph", ["top"], tmp_path / "o", False)
    assert options["seeds"] == [3, 4] and options["time_limit_s"] == 60 and options["results_dir"] is None
    assert options["cell_command"]("top", 3).startswith("foresight stargraph run smoke --runs top --seeds 3")
