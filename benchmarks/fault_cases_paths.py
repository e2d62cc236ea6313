"""Issue 21 items 1-2 as a user (or an attacker) meets them: folders that carry code (``auto_map``) and folders
whose files lead outside them (``../x``, absolute names, links), each run as a fresh ``foresight`` process with
``y`` lines on its stdin. Same table as ``fault_cases.py``; a case whose folder code ran says so.

    .venv/bin/python benchmarks/fault_cases_paths.py [--out FILE.md]

``cases(work)`` yields the rows, so ``fault_cases.py`` can include them (``yield from``). The same cases are
asserted in tests/cli/test_no_remote_code.py and tests/cli/test_confinement.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_table import COLUMNS, leftovers, run_table, seen  # noqa: E402  (the table helpers it shares with fault_cases.py)

WORDS = ["a", "b", "c", "ab", "<|endoftext|>"]
EVIL = 'import pathlib\npathlib.Path({marker!r}).write_text("ran")\n'


def _env(work: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
            "HF_MODULES_CACHE": str(work / "hf_modules"), "HF_HUB_OFFLINE": "1"}


def _run(args: list, work: Path) -> subprocess.CompletedProcess:
    """A fresh process with ``y`` answered to anything it asks on stdin."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=work, env=_env(work), input="y\n" * 20,
                          capture_output=True, text=True, timeout=600)


def _row(case: str, done, work: Path, marker: Path | None = None):
    line = seen(done)
    if marker is not None and marker.exists():
        line = "THE FOLDER'S CODE RAN; " + line
    return case, done.returncode, line, leftovers(work)


def _code_tokenizer(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(WORDS)}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]},
        "tokenizer_class": "EvilTokenizer", "eos_token": "<|endoftext|>"}))
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    return folder


def cases(work: Path):
    """Yields (case, exit status, what the user sees, temporaries left)."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from foresight.model import ModelConfig
    from foresight.train.lm import TrainableLM
    from foresight.train.state_file import save_state

    def fresh(name: str) -> Path:
        d = work / name
        d.mkdir(parents=True)
        return d

    # ---- code from a folder
    d = fresh("code_tokenizer")
    marker = d / "ran"
    tok = _code_tokenizer(d / "tok", marker)
    (d / "docs.txt").write_text("a b ab\n")
    done = _run(["-m", "foresight", "tokenizer", "info", tok], d)
    yield _row("tokenizer info: tokenizer_config.json auto_map + .py, y piped", done, d, marker)
    done = _run(["-m", "foresight", "prepare", "--input", d / "docs.txt", "--tokenizer", tok, "--out", d / "data"], d)
    yield _row("prepare --tokenizer: auto_map folder, y piped", done, d, marker)

    d = fresh("code_model")
    marker = d / "ran"
    script = (
        "import json, torch, foresight\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "cfg = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=16, num_hidden_layers=1,"
        " num_attention_heads=2, num_key_value_heads=1)\n"
        "foresight.wrap(LlamaForCausalLM(cfg), [{'name': 'ntp'}]).save_pretrained('m')\n"
        "c = json.load(open('m/config.json'))\n"
        "c.update(model_type='evil', architectures=['EvilModel'], auto_map={'AutoConfig': 'evil.C',"
        " 'AutoModelForCausalLM': 'evil.M'})\n"
        "json.dump(c, open('m/config.json', 'w'))\n"
        f"open('m/evil.py', 'w').write({EVIL.format(marker=str(marker))!r})\n"
        "from foresight.cli.main import main\n"
        "from foresight.errors import ForesightError\n"
        "try:\n"
        "    foresight.ForesightModel.from_pretrained('m')\n"
        "except ForesightError as e:\n"
        "    raise SystemExit('foresight: error: ' + str(e))\n")
    done = _run(["-c", script], d)
    yield _row("ForesightModel.from_pretrained: config.json auto_map + .py, y piped", done, d, marker)

    # ---- reads outside the folder
    cfg = ModelConfig(vocab_size=16, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16, max_seq_len=8)
    state_config = {"model": cfg.__dict__, "objectives": [{"name": "ntp"}]}

    d = fresh("dcp")
    import torch.distributed.checkpoint as dcp

    ckpt = d / "run" / "checkpoints" / "step_00000002"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled": one process is what is meant
        dcp.save({"model": TrainableLM(cfg, [{"name": "ntp"}]).state_dict()}, checkpoint_id=ckpt, no_dist=True)
    save_state({"step": 2, "config": state_config}, ckpt / "trainer.safetensors")
    shard = next(p for p in ckpt.iterdir() if p.suffix == ".distcp")
    shutil.move(shard, d / shard.name)
    shard.symlink_to(d / shard.name)
    done = _run(["-m", "foresight", "generate", d / "run", "--prompt-ids", "1 2", "--max-new-tokens", "1"], d)
    yield _row("generate: a DCP shard linked to a file elsewhere", done, d)

    d = fresh("wrapper_index")
    script = (
        "import json, shutil, foresight\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "from foresight.wrapper.io import load_into\n"
        "from foresight.errors import ForesightError\n"
        "cfg = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=16, num_hidden_layers=1,"
        " num_attention_heads=2, num_key_value_heads=1)\n"
        "w = foresight.wrap(LlamaForCausalLM(cfg), [{'name': 'ntp'}, {'name': 'top', 'window': 4}])\n"
        "w.save_pretrained('m')\n"
        "shutil.move('m/model.safetensors', 'x.safetensors')\n"
        "json.dump({'weight_map': {k: '../x.safetensors' for k in w.model.state_dict()}},"
        " open('m/model.safetensors.index.json', 'w'))\n"
        "try:\n"
        "    load_into(w, 'm')\n"
        "except ForesightError as e:\n"
        "    raise SystemExit('foresight: error: ' + str(e))\n")
    done = _run(["-c", script], d)
    yield _row("wrapper load_into: index shard ../x.safetensors", done, d)

    d = fresh("import_tokenizer_model")
    run = d / "run"
    (run / "tokenizer").mkdir(parents=True)
    from tokenizers import Tokenizer, models

    vocab = {"</s>": 0, "<unk>": 1, **{f"w{i}": i + 2 for i in range(14)}}
    Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(run / "tokenizer" / "tokenizer.json"))
    save_state({"lm": TrainableLM(cfg, [{"name": "ntp"}]).state_dict(), "config": {**state_config,
                "tokenizer": "tokenizer"}, "step": 2}, run / "checkpoints" / "step_00000002.safetensors")
    _run(["-m", "foresight", "export", run, "--out", d / "hf"], d)
    secret = d / "private.key"
    secret.write_bytes(b"secret")
    secret.chmod(0o600)
    (d / "hf" / "tokenizer.model").symlink_to(secret)
    done = _run(["-m", "foresight", "import", d / "hf", "--out", d / "imported"], d)
    copied = list(d.glob("imported/**/tokenizer.model"))
    case = "import: tokenizer.model linked to a 0600 file elsewhere"
    row = _row(case, done, d)
    if copied:
        row = (case, row[1], f"COPIED as {oct(copied[0].stat().st_mode & 0o777)}; " + row[2], row[3])
    yield row

    d = fresh("prepared")
    (d / "docs.txt").write_text("".join(f"doc {i} words and more words\n\n" for i in range(200)))
    _run(["-m", "foresight", "tokenizer", "train", "--input", d / "docs.txt", "--text-unit", "paragraph",
          "--vocab-size", "300", "--out",
          d / "tok"], d)
    _run(["-m", "foresight", "prepare", "--input", d / "docs.txt", "--text-unit", "paragraph", "--tokenizer", d / "tok",
          "--out", d / "data",
          "--val-fraction", "0.2"], d)
    lm = TrainableLM(ModelConfig(vocab_size=300, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=16,
                                 max_seq_len=8), [{"name": "ntp"}])
    save_state({"lm": lm.state_dict(), "config": {"model": lm.model.cfg.__dict__, "objectives": [{"name": "ntp"}]},
                "step": 1}, d / "run" / "checkpoints" / "step_00000001.safetensors")
    meta_path = d / "data" / "meta.json"
    original = meta_path.read_text()
    shutil.copyfile(d / "data" / "val_00000.bin", d / "x.bin")  # what --perplexity scores
    for label, name in (("../x.bin", "../x.bin"), ("an absolute path", str(d / "x.bin"))):
        meta = json.loads(original)
        meta["splits"]["val"]["shards"][0]["file"] = name
        meta_path.write_text(json.dumps(meta))
        done = _run(["-m", "foresight", "eval", d / "run", "--perplexity", d / "data"], d)
        yield _row(f"eval --perplexity: meta.json names {label}", done, d)
    del torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()
    run_table(COLUMNS, cases, args.out)

if __name__ == "__main__":
    main()
