"""Property-based tests (issue 21, item 6): whatever a user's file or command line holds, foresight either
succeeds or says what is wrong in exactly one ``foresight...: error:`` line with exit 1 or 2, never a traceback.

Generated inputs: values of ``config.json`` keys (``import``), whole weight index files, values at key paths of
prepared data's ``meta.json`` (``train``), extra ``metrics.jsonl`` lines (``compare``), recipe sections and
``--set`` numbers (``stargraph run``), and numbers on the command line (``stargraph generate``, ``generate``).
Every call is in-process (``foresight.cli.main.main``); hypothesis is derandomised so CI sees the same cases,
and the example counts keep the file under a minute on one core.

Numbers are drawn from small ranges (and NaN / infinities): sizes large enough to allocate gigabytes are
item 3's limits (``tests`` of the size checks), not something to try here.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402 (after the importorskip above)
from hypothesis import strategies as st  # noqa: E402

from foresight.cli.main import main  # noqa: E402
from foresight.data.prepare import PrepareConfig, prepare  # noqa: E402
from foresight.data.sources import Documents, expand_inputs  # noqa: E402
from foresight.data.tokenizer import train_tokenizer  # noqa: E402
from foresight.hf import export_lm  # noqa: E402
from foresight.model import ModelConfig  # noqa: E402
from foresight.train.lm import TrainableLM  # noqa: E402

ERROR = re.compile(r"^foresight( [\w-]+)*: error: ")  # argparse's errors name the subcommand too
SETTINGS = dict(deadline=None, derandomize=True, database=None, report_multiple_bugs=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SPECS = [{"name": "ntp"}, {"name": "top", "window": 8}]
TEXTS = ["alpha beta gamma delta " * 5, "one two three four five " * 5, "print('hello world')\n" * 5]

# JSON values a careless edit or a hostile file may hold: small numbers, NaN and infinities, strings, nulls,
# booleans and nested lists / objects of them.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 64), st.floats(-1e3, 1e3),
                    st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.5, 1e-9]),
                    st.text(max_size=6), st.sampled_from(["../x", "/etc/passwd", "", "llama", "uint16"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4),
                                                                                            inner, max_size=3),
                      max_leaves=6)
_count = itertools.count()


def _call(args, capsys) -> tuple[int, str]:
    """Run the command; an exception escaping ``main`` fails the property with the command that raised it."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors: one line and exit 2 (the command line's own convention)
        code = e.code
    return code, capsys.readouterr().err


def _clean(code: int, err: str) -> None:
    """Success, or exactly one error line and exit 1 / 2; never a traceback."""
    assert "Traceback" not in err, err
    if code != 0:
        lines = [line for line in err.splitlines() if ERROR.match(line)]
        assert code in (1, 2) and len(lines) == 1, (code, err)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties")


def _fresh(root: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=root, prefix=f"case{next(_count)}-"))


@pytest.fixture(scope="module")
def hf_dir(root) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=24, hidden_size=16, n_layers=1, n_heads=2, intermediate_size=32, max_seq_len=16)
    export_lm(TrainableLM(cfg, SPECS), SPECS, root / "hf", with_heads=True)
    return root / "hf"


@pytest.fixture(scope="module")
def data_dir(root) -> Path:
    files = []
    for i in range(8):
        files.append(root / f"doc{i}.txt")
        files[-1].write_text(TEXTS[i % 3] * 8)
    prepare(Documents(expand_inputs([str(f) for f in files])), train_tokenizer(TEXTS, 300), root / "data",
            PrepareConfig(val_fraction=0.25), progress=False)
    return root / "data"


CONFIG_KEYS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "intermediate_size", "rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling",
               "max_position_embeddings", "head_dim", "tie_word_embeddings", "model_type", "architectures",
               "hidden_act", "initializer_range", "layer_types", "attention_bias", "mlp_bias"]


@settings(max_examples=40, **SETTINGS)
@given(changes=st.dictionaries(st.sampled_from(CONFIG_KEYS), values, min_size=1, max_size=3))
@example(changes={"vocab_size": "x"})  # the cases: int("x"), int(None), a list, NaN
@example(changes={"hidden_size": None})
@example(changes={"num_attention_heads": 0})
@example(changes={"rms_norm_eps": float("nan"), "architectures": 5})
def test_any_config_json(hf_dir, root, capsys, changes):
    folder = _fresh(root) / "hf"
    shutil.copytree(hf_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    _clean(*_call(["import", folder, "--out", folder.parent / "out"], capsys))


@settings(max_examples=25, **SETTINGS)
@given(index=st.one_of(values, st.dictionaries(st.just("weight_map"), values, min_size=1),
                       st.builds(lambda names: {"weight_map": names},
                                 st.dictionaries(st.text(max_size=6), st.one_of(values, st.just("model.safetensors")),
                                                 max_size=3))))
@example(index=[])  # the cases: a list, a list weight_map, an unhashable shard name
@example(index={"weight_map": ["model.safetensors"]})
@example(index={"weight_map": {"lm_head.weight": ["model.safetensors"]}})
def test_any_weight_index(hf_dir, root, capsys, index):
    folder = _fresh(root) / "hf"
    shutil.copytree(hf_dir, folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    _clean(*_call(["import", folder, "--out", folder.parent / "out"], capsys))


META_PATHS = [("format",), ("version",), ("dtype",), ("tokenizer",), ("tokenizer", "vocab_size"),
              ("tokenizer", "eos_id"), ("tokenizer", "sha256"), ("splits",), ("splits", "train"),
              ("splits", "val", "tokens"), ("splits", "train", "documents"), ("splits", "train", "shards"),
              ("splits", "train", "shards", 0), ("splits", "train", "shards", 0, "file"),
              ("splits", "train", "shards", 0, "tokens"), ("splits", "val", "shards", 0, "sha256")]


def _set(meta: dict, path: tuple, value) -> dict:
    meta = copy.deepcopy(meta)
    node = meta
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return meta


@settings(max_examples=30, **SETTINGS)
@given(changes=st.lists(st.tuples(st.sampled_from(META_PATHS), values), min_size=1, max_size=2))
@example(changes=[(("tokenizer",), [1])])  # the cases: wrong types where open() reads fields
@example(changes=[(("splits", "train", "shards", 0), "x")])
@example(changes=[(("dtype",), ["uint16"])])
def test_any_meta_json(data_dir, root, capsys, changes):
    case = _fresh(root)
    folder = case / "data"
    shutil.copytree(data_dir, folder)
    meta = json.loads((folder / "meta.json").read_text())
    for path, value in changes:
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier change removed the parent
            meta = _set(meta, path, value)
    (folder / "meta.json").write_text(json.dumps(meta))
    recipe = case / "r.yaml"
    recipe.write_text(json.dumps({
        "task": "text", "text": {"data": str(folder), "seq_len": 8, "val_batches": 0, "verify_data": "full"},
        "model": {"hidden_size": 8, "n_layers": 1, "n_heads": 2, "intermediate_size": 16},
        "train": {"steps": 1, "batch_size": 2, "device": "cpu", "eval_every": 0}, "runs": {"ntp": [{"name": "ntp"}]}}))
    _clean(*_call(["train", recipe, "--out", case / "run"], capsys))


GOOD_METRICS = [{"kind": "meta", "step": 0, "params": 10, "total_params": 12, "objectives": ["ntp"]},
                {"kind": "train", "step": 1, "loss": 2.0, "ntp_loss": 2.0, "tokens": 8, "tokens_per_s": 5.0},
                {"kind": "eval", "step": 1, "val_loss": 2.1, "val_ntp_loss": 2.1}]
metric_lines = st.one_of(values.map(json.dumps),
                         st.builds(lambda kind, extra: json.dumps({"kind": kind, **extra}),
                                   st.sampled_from(["meta", "train", "eval", "other"]),
                                   st.dictionaries(st.sampled_from(["step", "loss", "ntp_loss", "val_loss", "tokens",
                                                                    "params", "objectives", "tokens_per_s"]),
                                                   values, max_size=3)),
                         st.text(max_size=20))


@settings(max_examples=40, **SETTINGS)
@given(lines=st.lists(metric_lines, min_size=1, max_size=3))
@example(lines=['{"kind": "train", "step": "x"}'])  # the cases
@example(lines=["[1]", '{"kind": "meta", "step": 0, "params": "many"}'])
def test_any_metrics_lines_in_compare(root, capsys, lines):
    run = _fresh(root) / "runs" / "a"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD_METRICS)
                                       + "".join(line.replace("\n", " ") + "\n" for line in lines))
    _clean(*_call(["compare", run.parent, "--out", run.parent / "cmp"], capsys))


# The smoke recipe at its smallest: whatever a test sets on top, a valid run is a few steps of a tiny model.
TINY = ["--runs", "ntp", "--set", "train.steps=2", "--set", "train.eval_every=0", "--set", "stargraph.test_size=8",
        "--set", "stargraph.train_size=64"]
SET_KEYS = ["train.steps", "train.batch_size", "train.micro_batch_size", "train.lr", "train.min_lr",
            "train.warmup_steps", "train.grad_clip", "train.log_every", "train.ckpt_every", "train.keep_last",
            "train.seed", "train.stop_after", "train.betas", "model.hidden_size", "model.n_heads", "model.n_layers",
            "model.n_kv_heads", "model.intermediate_size", "stargraph.deg", "stargraph.path", "stargraph.nodes",
            "stargraph.seed", "stargraph.eval_batch_size", "stargraph.jobs", "stargraph.test_size"]
numbers = st.one_of(st.integers(-3, 40), st.floats(-2, 40), st.sampled_from(["nan", "inf", "-inf", "1e400", "x",
                                                                             "null", "[]", "{}", "true", "0x10"]))


@settings(max_examples=30, **SETTINGS)
@given(sets=st.lists(st.tuples(st.sampled_from(SET_KEYS), numbers), min_size=1, max_size=2))
@example(sets=[("train.micro_batch_size", 0)])  # the case: a ZeroDivisionError traceback
def test_any_set_numbers(root, capsys, sets):
    overrides = [a for key, value in sets for a in ("--set", f"{key}={value}")]
    _clean(*_call(["stargraph", "run", "smoke", *TINY, *overrides, "--out", _fresh(root) / "run"], capsys))


SECTIONS = ["task", "stargraph", "model", "train", "runs"]


@settings(max_examples=20, **SETTINGS)
@given(changes=st.dictionaries(st.sampled_from(SECTIONS), values, min_size=1, max_size=2))
@example(changes={"task": []})  # found by this test: unhashable task name
@example(changes={"train": None})  # found by this test: a null section under the star graph's seeds
@example(changes={"runs": {"\ud800": None}})  # found by this test: a lone surrogate in the error line
def test_any_recipe_sections(root, capsys, changes):
    case = _fresh(root)
    recipe = {"task": "stargraph", "stargraph": {"deg": 2, "path": 3, "nodes": 10, "train_size": 64, "test_size": 8},
              "model": {"hidden_size": 16, "n_layers": 1, "n_heads": 2, "intermediate_size": 32},
              "train": {"steps": 2, "batch_size": 8, "eval_every": 0, "device": "cpu"},
              "runs": {"ntp": [{"name": "ntp"}]}}
    recipe.update(changes)
    (case / "r.yaml").write_text(json.dumps(recipe))
    _clean(*_call(["stargraph", "run", case / "r.yaml", "--out", case / "run"], capsys))


ints = st.one_of(st.integers(-5, 30), st.sampled_from(["x", "1.5", "nan", "", "-0", "1e3"]))


@settings(max_examples=30, **SETTINGS)
@given(deg=ints, path=ints, nodes=ints, count=ints, seed=ints)
def test_any_stargraph_generate_numbers(root, capsys, deg, path, nodes, count, seed):
    _clean(*_call(["stargraph", "generate", "--deg", deg, "--path", path, "--nodes", nodes, "--count", count,
                   "--seed", seed, "--out", _fresh(root) / "g.txt"], capsys))
