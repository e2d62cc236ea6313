"""``foresight export``: a checkpoint -> a standard Hugging Face ``LlamaForCausalLM`` (or ``Qwen2ForCausalLM``) folder.

The folder loads with plain ``transformers.AutoModelForCausalLM.from_pretrained(out)`` (no custom code) and
computes the same next-token logits as ``lm.model`` (the trunk with the NTP head; MTP head 0 is the trunk's
own last layer, so an MTP model exports as an ordinary model of ``n_layers`` layers, as in Meta MTP §2).
Files: ``config.json``, ``model.safetensors``, ``generation_config.json``, the tokenizer files when the run
has a tokenizer, with ``with_heads`` the objective heads (layout in ``foresight.hf.heads``), and last the
completion record ``foresight_complete.json`` that foresight's readers require of a folder with heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from foresight.errors import ForesightError
from foresight.hf.config import to_hf_config
from foresight.hf.heads import EXPORT_FORMAT, HEADS_FILE, dsmtp_config, dsmtp_to_deepseek, heads_metadata, plain_heads
from foresight.hf.tokenizer import TOKENIZER_FILES, copy_tokenizer, find_tokenizer, special_tokens
from foresight.hf.weights import SAFETENSORS, trunk_key_to_hf, write_safetensors
from foresight.io import RECORD, folder_transaction, write_json

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Every name an export writes in its folder: ``--force`` replaces a folder holding these and nothing else.
EXPORT_NAMES = frozenset({SAFETENSORS, "config.json", "generation_config.json", HEADS_FILE, RECORD,
                          *TOKENIZER_FILES})


@dataclass
class ExportReport:
    out: Path
    architecture: str
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)  # objective keys whose parameters were exported


def trunk_tensors(lm) -> dict[str, torch.Tensor]:
    """The trunk's parameters under HF names; a tied head is stored once (as the embedding), as HF does."""
    state = lm.model.state_dict()
    if lm.model.cfg.tie_embeddings:
        state.pop("lm_head.weight")
    return {trunk_key_to_hf(k): v for k, v in state.items()}


def export_lm(lm, specs: list[dict], out: Path, *, with_heads: bool = False, dtype: str = "float32",
              tokenizer: Path | None = None, special_ids: dict | None = None, force: bool = False) -> ExportReport:
    """Write ``lm`` (a ``TrainableLM``) as a Hugging Face folder ``out``; see the module docstring.

    The folder is a transaction (``foresight.io.folder_transaction``): it is written beside ``out`` under a
    temporary name, ends with its completion record and replaces ``out`` only when complete, so a failure or a
    ``kill -9`` leaves the earlier folder (or none), never a half-exported one; ``force`` replaces a whole earlier
    export (no file of it stays: not its heads, not its tokenizer)."""
    ffn = lm.model.cfg.ffn
    if ffn != "dense":  # before anything is written
        kind = "a mixture-of-experts" if ffn == "moe" else "an UltraMemV2 memory-layer"
        raise ForesightError(f"cannot export {kind} model (model.ffn={ffn}): Hugging Face has no standard class "
                             f"for it; use the foresight checkpoint (foresight eval / generate read it)")
    if dtype not in DTYPES:
        raise ForesightError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = Path(out)
    check_export_target(out, force)
    with folder_transaction(out, EXPORT_FORMAT) as tmp:
        report = _export_lm(lm, specs, tmp, with_heads=with_heads, dtype=dtype, tokenizer=tokenizer,
                            special_ids=special_ids)
    report.out = out
    return report


def check_export_target(out: Path, force: bool) -> None:
    """``out`` may be written: it does not exist, is empty, or (with ``force``) holds an earlier export and nothing
    else; anything of the user's in it is never replaced (``foresight.io.check_replaceable``)."""
    from foresight.io import check_replaceable

    check_replaceable(out, force, EXPORT_FORMAT, EXPORT_NAMES, "export")


def _export_lm(lm, specs: list[dict], out: Path, *, with_heads: bool, dtype: str, tokenizer: Path | None,
               special_ids: dict | None) -> ExportReport:
    from foresight.objectives import DSMTP, MTP, NTP, TOP

    cfg = lm.model.cfg
    report = ExportReport(out, "Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM")

    ids = dict(special_ids or {})
    if tokenizer is not None:
        report.files += copy_tokenizer(tokenizer, out)
        ids = {role: i for role, (_, i) in special_tokens(out).items()} | ids
    else:
        report.warnings.append("no tokenizer known for this checkpoint: exported without tokenizer files "
                               "(pass --tokenizer PATH to include one)")

    tensors = trunk_tensors(lm)
    hf_config = to_hf_config(cfg, dtype=dtype, bos_id=ids.get("bos"), eos_id=ids.get("eos"), pad_id=ids.get("pad"))
    if with_heads:
        dsmtp = [k for k, o in lm.objectives.items() if isinstance(o, DSMTP)]
        if len(dsmtp) > 1:
            raise ForesightError(f"the DeepSeek layout holds one set of DS-MTP modules; this run has {len(dsmtp)}")
        for key in dsmtp:
            tensors.update(dsmtp_to_deepseek(lm, key, cfg.n_layers))
            hf_config["num_nextn_predict_layers"] = len(lm.objectives[key].layers)
            hf_config["foresight_dsmtp"] = dsmtp_config(lm, key)
            extra = hf_config["foresight_dsmtp"]
            if extra["h0"] != "post_norm" or extra["proj_bias"]:
                report.warnings.append(
                    f"DS-MTP modules read h0={extra['h0']} and proj_bias={extra['proj_bias']}; DeepSeek-style "
                    "consumers assume post_norm and no bias (config.json foresight_dsmtp records both)")
            report.heads.append(key)
        plain = plain_heads(lm)
        kinds = {k for k, o in lm.objectives.items() if not isinstance(o, (NTP, DSMTP))}
        if plain or dsmtp:
            cast = {k: v.to(DTYPES[dtype]) for k, v in plain.items()}
            write_safetensors(cast, out / HEADS_FILE, heads_metadata(specs))
            report.files.append(HEADS_FILE)
            report.heads += sorted(kinds)
        unknown = [k for k, o in lm.objectives.items() if not isinstance(o, (NTP, TOP, MTP, DSMTP))]
        if unknown:
            report.warnings.append(f"objectives {unknown} have no export layout; their heads were written by name")
        if not report.heads:
            report.warnings.append("--with-heads: this run has no TOP, MTP or DS-MTP heads; exported the trunk only")

    write_safetensors({k: v.to(DTYPES[dtype]) for k, v in tensors.items()}, out / SAFETENSORS, {"format": "pt"})
    write_json(out / "config.json", hf_config)
    generation = {"_from_model_config": True, "bos_token_id": ids.get("bos"), "eos_token_id": ids.get("eos"),
                  "pad_token_id": ids.get("pad"), "do_sample": False}
    write_json(out / "generation_config.json", generation)
    report.files = [SAFETENSORS, "config.json", "generation_config.json"] + report.files
    return report


def export_checkpoint(source: Path, out: Path, *, with_heads: bool = False, dtype: str = "float32",
                      tokenizer: Path | None = None, force: bool = False) -> ExportReport:
    """Load a checkpoint (file or run folder), find its tokenizer, and export it."""
    from foresight.train.lm import TrainableLM

    lm, state = TrainableLM.from_checkpoint(source)
    if tokenizer is None:
        tokenizer = find_tokenizer(state, Path(source))
    specs = state["config"]["objectives"]
    return export_lm(lm, specs, out, with_heads=with_heads, dtype=dtype, tokenizer=tokenizer, force=force)


@torch.no_grad()
def max_logit_difference(lm, folder: Path, length: int = 11, seed: int = 0) -> float:
    """Max |logits(foresight) - logits(transformers)| on random ids, both in fp32 (the export's check)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False).float().eval()
    ids = torch.randint(0, lm.model.cfg.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))
    ours = lm.model.float().eval()(ids)
    theirs = hf(input_ids=ids).logits
    return float((ours - theirs).abs().max())
