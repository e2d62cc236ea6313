"""``foresight import``: a local Llama / Qwen2 Hugging Face folder -> a foresight checkpoint, losslessly.

The TOP paper's continued-training setting starts from an existing model and adds TOP (or MTP / DS-MTP) to its
training. Import builds a ``TrainableLM`` with the same trunk function (same logits as transformers, fp32),
adds the requested objectives with freshly initialised heads, and writes a checkpoint in the trainer's format
that ``TrainableLM.from_checkpoint`` (and so ``export``, ``eval``, ``generate``) reads.

``load_pretrained_into(lm, path)`` is the hook for a recipe that starts from pretrained weights: it copies
the trunk (and any heads whose names and shapes match) from an HF folder or a foresight checkpoint into an
already built ``TrainableLM``, after checking that the architectures agree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from foresight.errors import ForesightError
from foresight.hf.config import from_hf_config
from foresight.hf.heads import HEADS_FILE, check_complete, dsmtp_from_deepseek, dsmtp_spec_from_hf, specs_from_metadata
from foresight.hf.weights import hf_key_to_trunk, read_hf_shapes, read_hf_weights
from foresight.io import RECORD, check_replaceable
from foresight.paths import inside, note_ignored_code
from foresight.train.checkpoint import IMPORT_FORMAT

# ModelConfig fields that change the function or the parameter shapes (init_std and max_seq_len do not).
_ARCH_FIELDS = ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads", "intermediate_size",
                "rope_theta", "rope_scaling", "norm_eps", "tie_embeddings", "qkv_bias")


@dataclass
class LoadReport:
    """What ``load_pretrained_into`` copied: trunk tensors, and per objective 'loaded' or 'fresh'."""

    source: str
    trunk_tensors: int = 0
    objectives: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        heads = ", ".join(f"{k} {v}" for k, v in self.objectives.items()) or "none"
        return f"{self.trunk_tensors} trunk tensors from {self.source}; objective heads: {heads}"


def read_hf_config(folder: Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ForesightError(f"Hugging Face model folder not found: {folder}")
    path = folder / "config.json"
    if not path.is_file():
        raise ForesightError(f"{folder} has no config.json; give a Hugging Face model folder (config.json + weights)")
    try:
        config = json.loads(inside(folder, "config.json").read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested beyond reason
        raise ForesightError(f"{path} is not valid JSON ({e})") from None
    check_complete(folder, config)  # a foresight export is read only when it is whole
    return config


def _heads_file(folder: Path) -> tuple[dict[str, torch.Tensor], list[dict] | None]:
    path = Path(folder) / HEADS_FILE
    if not path.is_file():
        return {}, None
    from safetensors import safe_open

    inside(folder, HEADS_FILE)

    try:
        with safe_open(str(path), framework="pt") as f:
            specs = specs_from_metadata(f.metadata(), str(path))
            return {k: f.get_tensor(k) for k in f.keys()}, specs
    except ForesightError:
        raise
    except Exception as e:
        raise ForesightError(f"cannot read {path} ({type(e).__name__})") from None


def check_trunk_fits(cfg, shapes: dict[str, tuple], where: str, prefix: str = "") -> None:
    """The trunk ``cfg`` describes against the tensors a folder or checkpoint holds (``shapes``: name -> shape; HF
    names, or foresight names under ``prefix``), before the trunk is built: a ``config.json`` asking for more than
    its weight files hold is one line, not an allocation of the size it asks for."""
    from foresight.model import Transformer
    from foresight.model.limits import check_shapes, shapes_on_meta

    if prefix:
        named = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    else:
        named = {t: v for k, v in shapes.items() if (t := hf_key_to_trunk(k)) is not None}
    tied = ("lm_head.weight",) if cfg.tie_embeddings else ()  # HF does not store a tied head
    check_shapes(shapes_on_meta(lambda: Transformer(cfg)), named, where, extra_ok=True, missing_ok=tied)


def check_same_architecture(model_cfg, source_cfg, where: str) -> None:
    """One line naming every ModelConfig field on which the model and the source disagree."""
    diffs = [f"{f} {getattr(model_cfg, f)} vs {getattr(source_cfg, f)}" for f in _ARCH_FIELDS
             if getattr(model_cfg, f) != getattr(source_cfg, f)]
    if diffs:
        raise ForesightError(f"{where} does not fit the model (model vs source): {'; '.join(diffs)}")


def _load_trunk(lm, named: dict[str, torch.Tensor], where: str) -> int:
    """Copy trunk tensors (foresight names, e.g. ``layers.0.mlp.up_proj.weight``) into ``lm.model``."""
    target = lm.model.state_dict()
    if lm.model.cfg.tie_embeddings:
        target.pop("lm_head.weight")  # the same tensor as the embedding; HF does not store it when tied
    missing = [k for k in target if k not in named]
    if missing:
        raise ForesightError(f"{where}: missing trunk weight {missing[0]!r} ({len(missing)} missing in all)")
    with torch.no_grad():
        for k, dst in target.items():
            src = named[k]
            if tuple(src.shape) != tuple(dst.shape):
                raise ForesightError(f"{where}: {k} has shape {tuple(src.shape)}, the model needs {tuple(dst.shape)}")
            dst.copy_(src.to(dst.dtype))
    return len(target)


def _load_objectives(lm, named: dict[str, torch.Tensor], report: LoadReport, where: str) -> None:
    """Copy every objective's parameters found in ``named`` (keys ``objectives.<key>.*``); all or nothing each.

    A tensor that is there with another shape is an error (issue 21: it used to be replaced by a fresh head
    without a word); an objective with tensors missing keeps its fresh initialisation (a new head on a pretrained
    trunk)."""
    state = lm.state_dict()
    for key, obj in lm.objectives.items():
        wanted = [f"objectives.{key}.{n}" for n in obj.state_dict()]
        if not wanted:
            continue
        for n in wanted:
            if n in named and tuple(named[n].shape) != tuple(state[n].shape):
                raise ForesightError(f"{where}: {n[len('objectives.'):]} has shape {tuple(named[n].shape)}, objective "
                                     f"{key!r} of this model needs {tuple(state[n].shape)}; the heads were saved for "
                                     f"another model or objective settings")
        have = [n for n in wanted if n in named and tuple(named[n].shape) == tuple(state[n].shape)]
        if len(have) == len(wanted):
            with torch.no_grad():
                for n in wanted:
                    state[n].copy_(named[n].to(state[n].dtype))
            report.objectives[key] = "loaded"
        else:
            report.objectives[key] = "fresh"


def _load_hf(lm, folder: Path, weights: dict[str, torch.Tensor]) -> LoadReport:
    """Trunk from the HF names, TOP / MTP heads from the heads file, DS-MTP modules from the DeepSeek layout."""
    from foresight.objectives import DSMTP

    report = LoadReport(str(folder))
    named = {t: v for k, v in weights.items() if (t := hf_key_to_trunk(k)) is not None}
    report.trunk_tensors = _load_trunk(lm, named, str(folder))
    heads, _ = _heads_file(folder)
    objective_named = {f"objectives.{k}": v for k, v in heads.items()}
    n_layers = lm.model.cfg.n_layers
    for key, obj in lm.objectives.items():
        if isinstance(obj, DSMTP) and f"model.layers.{n_layers}.eh_proj.weight" in weights:
            objective_named.update(dsmtp_from_deepseek(weights, lm, key, n_layers))
    _load_objectives(lm, objective_named, report, str(folder))
    return report


def load_pretrained_into(lm, path: Path) -> LoadReport:
    """Initialise ``lm`` (a ``TrainableLM``) from pretrained weights; returns what was loaded.

    ``path``: a Hugging Face folder (Llama / Qwen2, optionally with foresight's exported heads) or a foresight
    checkpoint (file or run folder). The trunk must match ``lm.model.cfg`` exactly (vocabulary, widths,
    layers, heads, RoPE base, norm eps, tying, qkv bias) and is always loaded; an objective's heads are
    loaded when the source has all of them with the right shapes, else they keep their fresh initialisation
    (the continued-training case: a pretrained trunk plus a new TOP head).
    """
    from foresight.model import ModelConfig

    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        hf_config = read_hf_config(path)
        check_same_architecture(lm.model.cfg, from_hf_config(hf_config, str(path / "config.json")), str(path))
        return _load_hf(lm, path, read_hf_weights(path))

    from foresight.train.checkpoint import load_checkpoint

    report = LoadReport(str(path))
    state = load_checkpoint(path)
    source_cfg = state["config"].get("model")
    if not isinstance(source_cfg, dict):
        raise ForesightError(f"{path}: checkpoint config has no 'model' section")
    check_same_architecture(lm.model.cfg, ModelConfig(**source_cfg), str(path))
    named = {k[len("model."):]: v for k, v in state["lm"].items() if k.startswith("model.")}
    report.trunk_tensors = _load_trunk(lm, named, str(path))
    _load_objectives(lm, state["lm"], report, str(path))
    return report


def pretrained_model_config(path: Path):
    """The ``ModelConfig`` of a Hugging Face folder or a foresight checkpoint, for building the model that
    ``load_pretrained_into`` then fills (a recipe with ``init_from`` takes its model shape from here)."""
    from foresight.model import ModelConfig
    from foresight.train.checkpoint import load_checkpoint

    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        cfg = from_hf_config(read_hf_config(path), str(path / "config.json"))
        check_trunk_fits(cfg, read_hf_shapes(path), str(path))
        return cfg
    state = load_checkpoint(path)
    if not isinstance(state["config"].get("model"), dict):
        raise ForesightError(f"{path}: checkpoint config has no 'model' section")
    cfg = ModelConfig(**state["config"]["model"])
    check_trunk_fits(cfg, {k: tuple(v.shape) for k, v in state["lm"].items()}, str(path), prefix="model.")
    return cfg


def objectives_of_folder(folder: Path, hf_config: dict, weights: dict, n_layers: int) -> list[dict]:
    """The objective specs an exported folder carries (heads metadata, DeepSeek MTP layers), else NTP alone."""
    _, specs = _heads_file(folder)
    if specs:
        return specs
    spec = dsmtp_spec_from_hf(hf_config, weights, n_layers)
    return [{"name": "ntp"}, spec] if spec else [{"name": "ntp"}]


def _check_heads_held(cfg, specs: list[dict], folder: Path, weights: dict[str, torch.Tensor]) -> None:
    """Heads that the folder's own metadata asks for (heads file, ``num_nextn_predict_layers``) must be backed by
    tensors the folder holds: their parameters (counted on the meta device) at most what the heads file and the
    weights beyond the trunk hold. A heads file's few bytes of metadata saying ``mtp n: 64`` for a 7B model would
    otherwise build 63 fresh blocks, 50 GB. (Heads asked for with ``--objectives`` are the user's request.)"""
    import math

    from foresight.model import Transformer
    from foresight.model.limits import safetensors_shapes, shapes_on_meta
    from foresight.train.lm import TrainableLM

    needed = sum(math.prod(s) for k, s in shapes_on_meta(lambda: TrainableLM(cfg, specs)).items()
                 if k.startswith("objectives."))
    if not needed:
        return
    trunk = sum(math.prod(s) for s in shapes_on_meta(lambda: Transformer(cfg)).values())
    held = max(0, sum(t.numel() for t in weights.values()) - trunk)
    path = Path(folder) / HEADS_FILE
    if path.is_file():
        held += sum(math.prod(s) for s in safetensors_shapes(path).values())
    if needed > held:
        raise ForesightError(f"{folder}: its heads metadata asks for objectives with {needed:,} parameters "
                             f"({', '.join(str(s.get('name')) for s in specs)}) but the folder holds {held:,} "
                             f"beyond the trunk; the metadata does not belong to these weights (choose the heads "
                             f"to attach with --objectives)")


def import_hf(folder: Path, objectives: list[dict] | None = None):
    """(``TrainableLM``, specs, report) from a Hugging Face folder; ``objectives`` None = what the folder carries."""
    from foresight.train.lm import TrainableLM

    folder = Path(folder)
    hf_config = read_hf_config(folder)
    note_ignored_code(folder)  # read as data here: an auto_map's code is never imported
    cfg = from_hf_config(hf_config, str(folder / "config.json"))
    check_trunk_fits(cfg, read_hf_shapes(folder), str(folder))  # before reading or building anything large
    weights = read_hf_weights(folder)
    specs = objectives if objectives is not None else objectives_of_folder(folder, hf_config, weights, cfg.n_layers)
    if objectives is None:
        _check_heads_held(cfg, specs, folder, weights)
    lm = TrainableLM(cfg, specs)
    report = _load_hf(lm, folder, weights)
    return lm.eval(), specs, report


IMPORT_NAMES = frozenset({"step_00000000.safetensors", "tokenizer", RECORD})  # what an import writes in --out


def check_import_target(out: Path, force: bool) -> None:
    """``out`` may be written: it does not exist, is empty, or (with ``force``) holds an earlier import and
    nothing else (a folder a run has trained into holds more, and is never replaced)."""
    check_replaceable(out, force, IMPORT_FORMAT, IMPORT_NAMES, "import")


def save_imported(lm, specs: list[dict], out: Path, source: Path, tokenizer=None, *, force: bool = False) -> Path:
    """Write ``out/step_00000000.safetensors`` in the trainer's checkpoint format; returns its path.

    ``tokenizer``: None, or a function that writes the tokenizer files into the folder it is given (``tokenizer/``
    in the import's temporary folder) and returns their names. The folder is a transaction
    (``foresight.io.folder_transaction``): written beside ``out``, ended by its completion record, put in place
    only when whole; ``force`` replaces an earlier import as a whole (``check_import_target``).

    The file sits directly in ``out`` (not ``out/checkpoints``) so that a training run started with
    ``--out out --resume`` never mistakes it for a resumable state (it has no optimiser state).
    """
    from foresight.io import folder_transaction
    from foresight.train.checkpoint import SUFFIX
    from foresight.train.state_file import save_state

    out = Path(out)
    check_import_target(out, force)
    config = {"model": asdict(lm.model.cfg), "objectives": specs,
              "imported_from": {"path": str(Path(source).resolve()), "format": "huggingface"}}
    name = f"step_00000000{SUFFIX}"
    with folder_transaction(out, IMPORT_FORMAT) as tmp:
        if tokenizer is not None and tokenizer(tmp / "tokenizer"):
            config["tokenizer"] = "tokenizer"  # relative to this checkpoint's folder
        save_state({"lm": lm.state_dict(), "config": config, "step": 0}, tmp / name)
    return out / name
