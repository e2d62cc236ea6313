"""Data parallel on CPU: 2 processes, Gloo, FSDP2 and torch.distributed.checkpoint.

(a) A 2-rank run takes the same steps as one process on the same global batches (losses, gradient norms,
validation, final parameters; fp32, tight tolerances) for NTP+TOP, MTP and DS-MTP, with micro-batches, per-head
and one-graph backward, activation checkpointing and torch.compile; each FSDP unit reduce-scatters once per
micro-batch. (b) A 2-rank run resumed from its step-2 checkpoint logs exactly the uninterrupted run's steps 3-4.
(c) The sharded checkpoint loads into ``TrainableLM.from_checkpoint`` and exports; one process resumes it too.
(d) A global batch that does not split over the ranks is one error line. (e) Only rank 0 builds the model (and
reads ``text.init_from``); rank 1 builds it on the meta device, without initialisation, and every rank's shards
hold rank 0's weights exactly, the tied head included; an error on rank 0 is raised on every rank.

Trainer-level cases run in ``torch.multiprocessing.spawn`` workers; the command-line cases run the real
``torchrun -m foresight train``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from foresight.cli.main import main
from foresight.data.stargraph import StarGraphData, StarGraphSpec, generate
from foresight.errors import ForesightError
from foresight.model import Block, ModelConfig
from foresight.train.checkpoint import is_sharded, list_checkpoints
from foresight.train.config import TrainConfig
from foresight.train.distributed import build_on_rank0, check_batch
from foresight.train.lm import TrainableLM
from foresight.train.metrics import read_metrics
from foresight.train.trainer import Trainer

pytestmark = [
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                       reason="needs torch.distributed with the Gloo backend"),
    pytest.mark.slow,
]

SRC = Path(__file__).resolve().parents[2] / "src"
SPEC = StarGraphSpec(2, 3, 11)
MODEL = ModelConfig(vocab_size=SPEC.vocab_size, hidden_size=24, n_layers=2, n_heads=2, intermediate_size=40,
                    tie_embeddings=True)
STEPS, BATCH = 3, 8
# name -> (objectives, settings of both runs, settings of the 2-rank run only: they must not change the numbers)
CASES = {
    "ntp_top": ([{"name": "ntp"}, {"name": "top", "window": 16}], {}, {}),
    "mtp": ([{"name": "ntp"}, {"name": "mtp", "n": 3}], {},
            {"activation_checkpointing": True, "compile": True, "compile_backend": "aot_eager"}),
    "dsmtp": ([{"name": "ntp"}, {"name": "dsmtp", "depth": 2}], {}, {}),
    "dsmtp_v3_one_graph": ([{"name": "ntp"}, {"name": "dsmtp", "preset": "deepseek_v3"}],
                           {"per_head_backward": False}, {}),
}


def _data() -> StarGraphData:
    return StarGraphData(generate(SPEC, 64, seed=1), SPEC)


def _steps(case: str, run_dir: Path, two_ranks: bool) -> tuple[list[dict], dict, "Trainer"]:
    """STEPS optimiser steps of one case; (records, final parameters as whole tensors, trainer)."""
    objectives, both, ranks_only = CASES[case]
    torch.manual_seed(0)
    cfg = TrainConfig(steps=STEPS, batch_size=BATCH, micro_batch_size=2, lr=1e-2, min_lr=1e-3, warmup_steps=1,
                      device="cpu", tensorboard=False, **both, **(ranks_only if two_ranks else {}))
    data = _data()
    trainer = Trainer(TrainableLM(MODEL, objectives), cfg, run_dir, batch_fn=lambda s: data.batch(s, BATCH, 0),
                      run_config={})
    records = []
    for step in range(STEPS):
        trainer.step = step
        records.append(trainer.train_step(data.batch(step, BATCH, 0)))
    params = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
              for k, v in trainer.lm.state_dict().items()}
    return records, params, trainer


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo")  # the entry point joins the job; the Trainer only checks that it has
    torch.set_num_threads(1)
    # Count FSDP's reduce-scatters (whichever of the two functions this torch's FSDP calls; outermost calls only).
    sizes, depth = [], [0]

    def counting(original):
        def counted(*args, **kwargs):
            if not depth[0]:
                sizes.append((kwargs["input"] if "input" in kwargs else args[1]).numel())
            depth[0] += 1
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1
        return counted

    for name in ("reduce_scatter_single", "reduce_scatter_tensor"):
        if hasattr(dist, name):
            setattr(dist, name, counting(getattr(dist, name)))
    results = {}
    for case in CASES:
        sizes.clear()
        records, params, trainer = _steps(case, Path(out) / f"rank{rank}", two_ranks=True)
        units = 1 + sum(isinstance(m, Block) for m in trainer.lm.modules())
        total = sum(p.numel() for p in trainer.lm.parameters())
        results[case] = {"records": records, "params": params, "calls": len(sizes), "units": units,
                         "reduced": sum(sizes), "numel": total}
    if rank == 0:
        torch.save(results, Path(out) / "ranks.pt")
    dist.destroy_process_group()
    _let_gloo_finish()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("spawn")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2)
    return torch.load(out / "ranks.pt", weights_only=False)


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_take_the_one_process_steps(spawned, case, tmp_path, one_thread):
    ranks = spawned[case]
    records, params, _ = _steps(case, tmp_path, two_ranks=False)
    for step, (one, two) in enumerate(zip(records, ranks["records"]), start=1):
        assert set(one) == set(two)
        for key, value in one.items():
            if isinstance(value, float):
                assert two[key] == pytest.approx(value, rel=2e-6, abs=1e-7), f"step {step}: {key}"
    for key, value in params.items():
        torch.testing.assert_close(ranks["params"][key], value, rtol=1e-5, atol=2e-6, msg=key)
    # One reduce-scatter per unit per micro-batch (2 micro-batches per rank and step here), over every parameter
    # once (plus padding to a multiple of 2 rows): the shared embedding, norm and head are reduced once per
    # micro-batch although every objective's backward reached them.
    micro = STEPS * 2
    assert ranks["calls"] == micro * ranks["units"]
    assert micro * ranks["numel"] <= ranks["reduced"] < micro * (ranks["numel"] + 64 * ranks["units"])


def _join_env(rank: int, world: int, port: int) -> None:
    """What torchrun sets for each process."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _let_gloo_finish() -> None:
    """The last thing a worker does. Gloo's threads free a finished collective's tensors under the GIL; a process
    that exits before they could aborts ("terminate called without an active exception", about 1 run in 100
    here; pytorch/pytorch#179291). A pause hands them the GIL while Python is still alive."""
    time.sleep(0.2)


def _build_worker(rank: int, world: int, port: int, out: str) -> None:
    """Builds the tied DS-MTP model as the tasks do and shards it (the Trainer); saves what this rank saw."""
    _join_env(rank, world, port)
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    with build_on_rank0() as real:
        lm = TrainableLM(MODEL, CASES["dsmtp"][0])
    seen = {"real": real, "meta": [p.is_meta for p in lm.parameters()], "rng": torch.get_rng_state()}
    cfg = TrainConfig(steps=1, batch_size=BATCH, micro_batch_size=2, device="cpu", tensorboard=False)
    Trainer(lm, cfg, Path(out) / f"rank{rank}", batch_fn=lambda step: None, run_config={})
    seen["tied"] = lm.model.lm_head.weight is lm.model.embed_tokens.weight
    seen["params"] = {k: v.full_tensor() for k, v in lm.state_dict().items()}  # every rank's shards
    try:
        with build_on_rank0():
            if rank == 0:
                raise ForesightError("rank 0 could not read the weights")
    except ForesightError as e:
        seen["error"] = str(e)
    torch.save(seen, Path(out) / f"build{rank}.pt")
    dist.destroy_process_group()
    _let_gloo_finish()


def test_only_rank_0_builds_the_model_and_every_rank_gets_its_weights(tmp_path, one_thread):
    mp.spawn(_build_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    zero, first = [torch.load(tmp_path / f"build{r}.pt", weights_only=False) for r in range(2)]
    torch.manual_seed(0)
    untouched = torch.get_rng_state()
    with build_on_rank0() as real:  # one process: built for real, as before
        one = TrainableLM(MODEL, CASES["dsmtp"][0])
    assert real and not any(p.is_meta for p in one.parameters())
    assert zero["real"] and not any(zero["meta"]) and torch.equal(zero["rng"], torch.get_rng_state())
    assert not first["real"] and all(first["meta"]) and torch.equal(first["rng"], untouched)  # no initialisation
    for seen in (zero, first):
        assert seen["tied"]
        assert seen["params"].keys() == one.state_dict().keys()
        for key, value in one.state_dict().items():
            assert torch.equal(seen["params"][key], value), key
        assert seen["error"] == "rank 0 could not read the weights"


def test_the_model_has_no_buffers():
    """``DataParallel.shard`` sends parameters only: a buffer would stay uninitialised on ranks > 0."""
    objectives = [{"name": "ntp"}, {"name": "top", "window": 16}, {"name": "mtp", "n": 2},
                  {"name": "dsmtp", "depth": 2}]
    assert not list(TrainableLM(MODEL, objectives).buffers())


def test_batch_must_split_over_the_ranks():
    cfg = TrainConfig(batch_size=12, micro_batch_size=2)
    check_batch(cfg, 2)
    check_batch(cfg, 3)
    with pytest.raises(ForesightError, match=r"batch_size=12 is not divisible by 4 processes x "
                                             r"train.micro_batch_size=2 = 8"):
        check_batch(cfg, 4)


def test_the_trainer_does_not_join_the_job_itself(tmp_path, monkeypatch):
    """The entry point joins (and leaves) the process group; a Trainer built under torchrun without it is one
    clear error, and no process group gets created behind the caller's back."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = TrainConfig(steps=1, batch_size=BATCH, micro_batch_size=2, device="cpu", tensorboard=False)
    with pytest.raises(ForesightError, match="has not joined the process group; call "
                                             "foresight.train.distributed.init"):
        Trainer(TrainableLM(MODEL, [{"name": "ntp"}]), cfg, tmp_path, batch_fn=lambda step: None, run_config={})
    assert not dist.is_initialized()


# ------------------------------------------------------------------------------- torchrun, command line
@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """A prepared corpus and a recipe: NTP + TOP + DS-MTP, 4 steps of 8 sequences in micro-batches of 2,
    validation (3 batches: uneven over 2 ranks) and checkpoints every 2 steps."""
    from foresight.data.demo_corpus import demo_files
    from foresight.data.prepare import PrepareConfig, prepare
    from foresight.data.sources import Documents
    from foresight.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("text")
    files = demo_files(max_bytes=60_000)
    prepare(Documents(files, text_unit="paragraph"), train_tokenizer(Documents(files), 300), root / "data",
            PrepareConfig(val_fraction=0.1), progress=False)
    recipe = {
        "task": "text",
        "text": {"data": str(root / "data"), "seq_len": 16, "val_batches": 3, "val_batch_size": 2},
        "model": {"hidden_size": 24, "n_layers": 2, "n_heads": 2, "intermediate_size": 40, "tie_embeddings": True},
        "train": {"steps": 4, "batch_size": 8, "micro_batch_size": 2, "lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 1,
                  "log_every": 1, "eval_every": 2, "ckpt_every": 2, "keep_last": 3, "device": "cpu",
                  "tensorboard": False},
        "runs": {"all": [{"name": "ntp"}, {"name": "top", "window": 16}, {"name": "dsmtp", "depth": 2}]},
    }
    (root / "recipe.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    return root


def _torchrun(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "foresight", "train", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _lines(run: Path, kind: str) -> dict[int, dict]:
    drop = {"elapsed_s", "tokens_per_s", "tflops"}  # wall-clock numbers
    return {r["step"]: {k: v for k, v in r.items() if k not in drop}
            for r in read_metrics(run / "metrics.jsonl") if r["kind"] == kind}


@pytest.fixture(scope="module")
def runs(text) -> Path:
    """``full``: 2 ranks, 4 steps; ``single``: the same recipe in one process."""
    done = _torchrun(text / "recipe.yaml", "--out", text / "full")
    assert done.returncode == 0, done.stderr[-3000:]
    (text / "full.out").write_text(done.stdout)
    torch.set_num_threads(1)
    assert main(["train", str(text / "recipe.yaml"), "--out", str(text / "single")]) == 0
    return text


def test_torchrun_matches_one_process_and_only_rank_0_writes(runs):
    full, single = runs / "full" / "all", runs / "single" / "all"
    for kind in ("train", "eval"):
        two, one = _lines(full, kind), _lines(single, kind)
        assert sorted(two) == sorted(one) == ([1, 2, 3, 4] if kind == "train" else [2, 4])
        for step in one:
            for key, value in one[step].items():
                if isinstance(value, float):
                    assert two[step][key] == pytest.approx(value, rel=2e-6), f"{kind} step {step}: {key}"
    meta = [r for r in read_metrics(full / "metrics.jsonl") if r["kind"] == "meta"]
    assert len(meta) == 1 and meta[0]["world_size"] == 2  # one writer
    assert runs.joinpath("full.out").read_text().count("runs: all ->") == 1  # one printer
    assert json.loads((full / "result.json").read_text())["world_size"] == 2
    found = list_checkpoints(full / "checkpoints")
    assert [s for s, _ in found] == [2, 4] and all(is_sharded(p) for _, p in found)
    assert not [p for p in (full / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary left
    assert [s for s, p in list_checkpoints(single / "checkpoints") if p.suffix == ".safetensors"] == [2, 4]


def test_torchrun_resume_reproduces_steps_3_and_4(runs):
    cut = runs / "cut"
    shutil.copytree(runs / "full", cut)
    shutil.rmtree(cut / "all" / "checkpoints" / "step_00000004")
    done = _torchrun(runs / "recipe.yaml", "--out", cut, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    for kind in ("train", "eval"):
        assert _lines(cut / "all", kind) == _lines(runs / "full" / "all", kind)  # bit for bit
    again = TrainableLM.from_checkpoint(cut / "all")[0].state_dict()
    for key, value in TrainableLM.from_checkpoint(runs / "full" / "all")[0].state_dict().items():
        assert torch.equal(again[key], value), key


def test_sharded_checkpoint_loads_exports_and_resumes_in_one_process(runs, tmp_path):
    from foresight.hf.export import export_checkpoint

    lm, state = TrainableLM.from_checkpoint(runs / "full" / "all")
    one, _ = TrainableLM.from_checkpoint(runs / "single" / "all")
    assert state["step"] == 4 and state["world_size"] == 2 and "optimizer" not in state
    for key, value in one.state_dict().items():
        torch.testing.assert_close(lm.state_dict()[key], value, rtol=1e-5, atol=2e-6, msg=key)
    report = export_checkpoint(runs / "full" / "all" / "checkpoints" / "step_00000004", tmp_path / "hf")
    assert "tokenizer.json" in report.files and (tmp_path / "hf" / "model.safetensors").is_file()

    # One process continues a 2-rank checkpoint (DCP reshards): steps 3-4 as the 2-rank run took them.
    shutil.copytree(runs / "full", tmp_path / "one")
    shutil.rmtree(tmp_path / "one" / "all" / "checkpoints" / "step_00000004")
    assert main(["train", str(runs / "recipe.yaml"), "--out", str(tmp_path / "one"), "--resume"]) == 0
    two, resumed = _lines(runs / "full" / "all", "train"), _lines(tmp_path / "one" / "all", "train")
    for step in (3, 4):
        for key, value in two[step].items():
            if isinstance(value, float):
                assert resumed[step][key] == pytest.approx(value, rel=2e-6), f"step {step}: {key}"


def _task_worker(rank: int, world: int, port: int, record: str, command: list[str]) -> None:
    """Runs ``command`` through the command line (once: a process joins one job), recording whether each model
    reached the Trainer on the meta device and how often pretrained weights were read."""
    import foresight.hf
    from foresight.tasks import run as run_loop

    _join_env(rank, world, port)
    seen = {"meta": [], "loads": 0}

    class Recording(Trainer):
        def __init__(self, lm, *args, **kwargs):
            seen["meta"].append(all(p.is_meta for p in lm.parameters()))
            super().__init__(lm, *args, **kwargs)

    load = foresight.hf.load_pretrained_into

    def counted(*args, **kwargs):
        seen["loads"] += 1
        return load(*args, **kwargs)

    foresight.hf.load_pretrained_into = counted
    run_loop.Trainer = Recording  # the one run loop every task trains through
    seen["rc"] = main(command)
    torch.save(seen, f"{record}{rank}.pt")
    _let_gloo_finish()


def test_tasks_build_on_rank_0_only_and_train_as_one_process(runs, tmp_path, one_thread):
    """``text.init_from`` (read by rank 0 alone) and a star-graph recipe of two runs (tied embeddings)."""
    graph = {"task": "stargraph",
             "stargraph": {"deg": 2, "path": 3, "nodes": 10, "train_size": 64, "test_size": 16, "eval_batch_size": 16},
             "model": {"hidden_size": 24, "n_layers": 2, "n_heads": 2, "intermediate_size": 40, "tie_embeddings": True},
             "train": {"steps": 2, "batch_size": 8, "micro_batch_size": 2, "lr": 1e-2, "warmup_steps": 1,
                       "log_every": 1, "eval_every": 2, "device": "cpu", "tensorboard": False},
             "runs": {"ntp": [{"name": "ntp"}], "dsmtp": [{"name": "ntp"}, {"name": "dsmtp", "depth": 2}]}}
    (tmp_path / "graph.yaml").write_text(json.dumps(graph))
    init = ["--set", f"text.init_from={runs / 'single' / 'all'}", "--set", "train.steps=2"]
    recipes = {"text": [runs / "recipe.yaml", *init], "graph": [tmp_path / "graph.yaml"]}
    for task, (recipe, *options) in recipes.items():
        command = ["train", str(recipe), "--out", str(tmp_path / "two" / task), *options]
        mp.spawn(_task_worker, args=(2, _free_port(), str(tmp_path / task), command), nprocs=2)
        zero, first = [torch.load(tmp_path / f"{task}{r}.pt", weights_only=False) for r in range(2)]
        models = 1 if task == "text" else 2  # text: "all"; star graph: "ntp" and "dsmtp"
        assert zero["rc"] == first["rc"] == 0
        assert zero["meta"] == [False] * models and first["meta"] == [True] * models
        assert (zero["loads"], first["loads"]) == ((1, 0) if task == "text" else (0, 0))  # rank 0 alone reads it
        assert main(["train", str(recipe), "--out", str(tmp_path / "one" / task), *options]) == 0
    for run in ("text/all", "graph/ntp", "graph/dsmtp"):
        two, one = _lines(tmp_path / "two" / run, "train"), _lines(tmp_path / "one" / run, "train")
        assert sorted(two) == sorted(one) == [1, 2]
        for step in one:
            for key, value in one[step].items():
                if isinstance(value, float):
                    assert two[step][key] == pytest.approx(value, rel=2e-6), f"{run} step {step}: {key}"


def test_a_batch_that_does_not_split_is_one_error_line(text, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the check runs before the job is joined
    args = ["train", str(text / "recipe.yaml"), "--out", str(text / "bad"), "--set", "train.batch_size=6"]
    monkeypatch.setenv("RANK", "0")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("foresight: error: train.batch_size=6 is not divisible by 2 processes "
                                               "x train.micro_batch_size=2 = 4")
    monkeypatch.setenv("RANK", "1")  # every rank fails alike; only rank 0 says why
    assert main(args) == 2
    assert capsys.readouterr().err == ""
    assert not (text / "bad").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_torchrun_on_two_gpus_matches_one_gpu(text):
    """NCCL, bf16 autocast: the 2-GPU run takes the 1-GPU steps (up to reduction order)."""
    gpu = ["--set", "train.device=cuda", "--set", "train.compile=false"]
    done = _torchrun(text / "recipe.yaml", "--out", text / "gpu2", *gpu)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["train", str(text / "recipe.yaml"), "--out", str(text / "gpu1"), *gpu]) == 0
    two, one = _lines(text / "gpu2" / "all", "train"), _lines(text / "gpu1" / "all", "train")
    for step in one:
        for key in ("loss", "ntp_loss", "top_loss", "dsmtp_loss", "grad_norm"):
            assert two[step][key] == pytest.approx(one[step][key], rel=1e-3), f"step {step}: {key}"
    assert all(is_sharded(p) for _, p in list_checkpoints(text / "gpu2" / "all" / "checkpoints"))
