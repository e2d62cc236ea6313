"""Where the objective heads go in an exported folder, and how they come back.

Two layouts, both written by ``foresight export --with-heads`` and read back by ``foresight import``:

1. **DS-MTP modules: the DeepSeek-V3 layout** (DeepSeek-V3 §2.2; the layout transformers >= 5, vLLM and SGLang
   read). ``config.json`` gets ``num_nextn_predict_layers = D``, and module k (k = 0..D-1) is stored in
   ``model.safetensors`` as decoder layer ``L + k`` after the L trunk layers::

       model.layers.{L+k}.enorm.weight               RMSNorm of the token embedding        (D,)
       model.layers.{L+k}.hnorm.weight               RMSNorm of the previous hidden state  (D,)
       model.layers.{L+k}.eh_proj.weight             Linear 2D -> D, input [embedding; hidden] (D, 2D)
       model.layers.{L+k}.{input_layernorm,self_attn.*,post_attention_layernorm,mlp.*}   the block
       model.layers.{L+k}.shared_head.norm.weight    the norm before the output head       (D,)
       model.layers.{L+k}.shared_head.head.weight    a copy of lm_head                     (V, D)
       model.layers.{L+k}.embed_tokens.weight        a copy of the input embedding         (V, D)

   DeepSeek concatenates the embedding first. A module trained hidden-first (the TOP paper's preset) is
   converted exactly by swapping the two column halves of ``eh_proj``. What DeepSeek's layout cannot say is
   recorded in ``config.json["foresight_dsmtp"]``: whether module 1 reads the main model's hidden state before
   or after the final norm (``h0``), whether ``eh_proj`` has a bias, whether ``shared_head.norm`` is the
   module's own norm or a copy of the shared final norm. DeepSeek-style consumers assume h0 = post_norm and no
   bias; export warns when a module differs.

2. **TOP head and MTP heads: ``foresight_heads.safetensors``** beside the model, named as in foresight::

       top.head.weight                               W_top, the TOP unembedding (V, D)
       mtp.heads.{k-1}.{input_layernorm,self_attn.*,post_attention_layernorm,mlp.*}  MTP head k = 1..n-1,
                                                     a full block reading the input of the last trunk layer

   Its safetensors metadata holds ``{"format": "foresight-heads", "objectives": <JSON list of the run's
   objective specs>}``, so import rebuilds the same objectives. The file is also written (with only the
   metadata) when the run has DS-MTP modules alone, so their spec survives too.

Plain ``transformers`` ignores both: ``num_nextn_predict_layers`` is an unknown config key and the layers past
``num_hidden_layers`` are unused weights (reported as unexpected keys on load).
"""

from __future__ import annotations

import json

import torch

from foresight.errors import ForesightError
from foresight.objectives import as_written

HEADS_FILE = "foresight_heads.safetensors"
HEADS_FORMAT = "foresight-heads"
_DSMTP_EXTRA = ("hnorm.", "enorm.", "eh_proj.", "shared_head.", "embed_tokens.")


def _swap_halves(w: torch.Tensor) -> torch.Tensor:
    """(D, 2D) [A | B] -> [B | A]: turns a hidden-first projection into an embedding-first one and back."""
    d = w.shape[1] // 2
    return torch.cat([w[:, d:], w[:, :d]], dim=1)


def dsmtp_to_deepseek(lm, key: str, n_layers: int) -> dict[str, torch.Tensor]:
    """The DS-MTP objective ``lm.objectives[key]`` in the DeepSeek-V3 layout (``model.layers.{L+k}.*``)."""
    obj, trunk = lm.objectives[key], lm.model
    out: dict[str, torch.Tensor] = {}
    for k, module in enumerate(obj.layers):
        prefix = f"model.layers.{n_layers + k}."
        w = module.eh_proj.weight.detach()
        out[prefix + "eh_proj.weight"] = w if not module.hidden_first else _swap_halves(w)
        if module.eh_proj.bias is not None:
            out[prefix + "eh_proj.bias"] = module.eh_proj.bias.detach()
        out[prefix + "hnorm.weight"] = module.hnorm.weight.detach()
        out[prefix + "enorm.weight"] = module.enorm.weight.detach()
        for name, p in module.block.state_dict().items():
            out[prefix + name] = p
        norm = module.norm if module.norm is not None else trunk.norm
        out[prefix + "shared_head.norm.weight"] = norm.weight.detach()
        out[prefix + "shared_head.head.weight"] = trunk.lm_head.weight.detach()
        out[prefix + "embed_tokens.weight"] = trunk.embed_tokens.weight.detach()
    return out


def dsmtp_config(lm, key: str) -> dict:
    """What the DeepSeek layout cannot express, for ``config.json["foresight_dsmtp"]``."""
    cfg = lm.objectives[key].cfg
    return {"h0": cfg.h0, "proj_bias": cfg.proj_bias, "final_norm": cfg.final_norm,
            "trained_concat": cfg.concat, "stored_concat": "embed_first"}


def dsmtp_spec_from_hf(hf_config: dict, weights: dict[str, torch.Tensor], n_layers: int) -> dict | None:
    """An objective spec for the DeepSeek-layout modules in a folder, or None when it has none."""
    depth = int(hf_config.get("num_nextn_predict_layers") or 0)
    if depth < 1 or f"model.layers.{n_layers}.eh_proj.weight" not in weights:
        return None
    extra = hf_config.get("foresight_dsmtp") or {}
    return {"name": "dsmtp", "preset": "deepseek_v3", "depth": depth, "concat": "embed_first",
            "h0": extra.get("h0", "post_norm"), "final_norm": extra.get("final_norm", "own"),
            "proj_bias": f"model.layers.{n_layers}.eh_proj.bias" in weights}


def dsmtp_from_deepseek(weights: dict[str, torch.Tensor], lm, key: str, n_layers: int) -> dict[str, torch.Tensor]:
    """Foresight state-dict entries (``objectives.<key>.layers.*``) from the DeepSeek layout.

    The stored projection is embedding-first; a module configured hidden-first gets its halves swapped back.
    ``shared_head.head`` and ``embed_tokens`` are copies of the trunk's and are not loaded (they are shared).
    """
    obj = lm.objectives[key]
    out: dict[str, torch.Tensor] = {}
    for k, module in enumerate(obj.layers):
        src = f"model.layers.{n_layers + k}."
        dst = f"objectives.{key}.layers.{k}."
        if src + "eh_proj.weight" not in weights:
            raise ForesightError(f"DS-MTP module {k + 1} of {len(obj.layers)} is missing (no {src}eh_proj.weight)")
        for name, t in weights.items():
            if not name.startswith(src):
                continue
            rest = name[len(src):]
            if rest == "eh_proj.weight":
                out[dst + rest] = _swap_halves(t) if module.hidden_first else t
            elif rest.startswith(("hnorm.", "enorm.", "eh_proj.")):
                out[dst + rest] = t
            elif rest == "shared_head.norm.weight":
                if module.norm is not None:
                    out[dst + "norm.weight"] = t
            elif not rest.startswith(_DSMTP_EXTRA):
                out[dst + "block." + rest] = t
    return out


def plain_heads(lm) -> dict[str, torch.Tensor]:
    """TOP and MTP parameters under their foresight names without the ``objectives.`` prefix."""
    from foresight.objectives import DSMTP

    out = {}
    for key, obj in lm.objectives.items():
        if isinstance(obj, DSMTP):
            continue
        for name, p in obj.state_dict().items():
            out[f"{key}.{name}"] = p
    return out


def heads_metadata(specs: list) -> dict[str, str]:
    """The heads file's metadata; ``specs`` as written (dicts, or config objects: stored as their JSON form)."""
    return {"format": HEADS_FORMAT, "objectives": json.dumps(as_written(specs))}


def specs_from_metadata(metadata: dict | None, where: str) -> list[dict] | None:
    if not metadata or metadata.get("format") != HEADS_FORMAT:
        return None
    try:
        specs = json.loads(metadata["objectives"])
    except (KeyError, ValueError):
        raise ForesightError(f"{where}: metadata has no readable 'objectives' list") from None
    return specs


# A Hugging Face folder that foresight writes (``export``, ``ForesightModel.save_pretrained``) ends with a
# completion record (``foresight.io.RECORD``). A folder that shows it came from foresight (the heads file, or
# ``foresight_dsmtp`` in its config) but has no record is an interrupted or older write and is refused; a plain
# transformers folder has neither and loads as before.
EXPORT_FORMAT = "foresight-export"
WRAPPER_FORMAT = "foresight-wrapper"
HF_FORMATS = (EXPORT_FORMAT, WRAPPER_FORMAT)


def foresight_mark(folder, hf_config: dict | None = None) -> str | None:
    """What shows that ``folder`` was written by foresight, or None for a plain transformers folder."""
    from pathlib import Path

    if (Path(folder) / HEADS_FILE).exists():
        return HEADS_FILE
    if isinstance(hf_config, dict) and "foresight_dsmtp" in hf_config:
        return "foresight_dsmtp in config.json"
    return None


def check_complete(folder, hf_config: dict | None = None) -> None:
    """One line if ``folder`` is a foresight-written Hugging Face folder that is not known to be complete."""
    from pathlib import Path

    from foresight.io import RECORD, is_unfinished, read_record

    folder = Path(folder)
    if is_unfinished(folder):
        raise ForesightError(f"{folder} is the temporary folder of an interrupted foresight write and may be "
                             f"incomplete; use the folder it was written for, or write it again")
    record = read_record(folder)
    if record is None:
        mark = foresight_mark(folder, hf_config)
        if mark is not None:
            raise ForesightError(f"{folder} was written by foresight ({mark}) but has no {RECORD}, so it may be "
                                 f"incomplete (an interrupted or older export); export or save it again")
    elif record["format"] not in HF_FORMATS:
        raise ForesightError(f"{folder}: {RECORD} says it holds {record['format']!r}, not a Hugging Face model")
