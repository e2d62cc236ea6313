"""``foresight import FILE.gguf``: a llama.cpp GGUF file -> a foresight checkpoint, through transformers' loader.

GGUF (llama.cpp's format) stores a model's config, tokenizer and (often quantised) weights in one file.
transformers reads it (``from_pretrained(folder, gguf_file=name)``): it dequantises every tensor to fp32, undoes
llama.cpp's q/k row permutation and builds the tokenizer. We use that loader rather than our own so the model
is exactly what transformers computes, and copy its (fp32) weights into the trunk by the usual HF names
(``foresight.hf.weights``). The import is lossless with respect to the dequantised model; the quantisation
error itself (e.g. Q4_1's 4-bit blocks) is part of the weights and stays.

Checks made before transformers runs, each a one-line ``ForesightError``: the ``gguf`` package is installed
(``pip install 'foresight[gguf]'``); the path is a GGUF file or a folder with exactly one; the file is
complete (every tensor's bytes lie inside the file); the architecture is one the trunk computes (llama,
qwen2); every tensor's type is one gguf-py can dequantise.

Memory: the transformers model and the foresight model are both held in fp32 for a moment (2 x 4 bytes per
parameter: ~1.1 GB for the 135M-parameter SmolLM2).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from foresight.errors import ForesightError

ARCHITECTURES = {"llama": "Llama", "qwen2": "Qwen2"}  # GGUF general.architecture -> what the trunk computes
MAGIC = b"GGUF"
INSTALL = "reading GGUF files needs the gguf package: pip install 'foresight[gguf]' (or pip install gguf)"


@dataclass
class GGUFInfo:
    """What the header says: enough to refuse a file before transformers reads it."""

    path: Path
    architecture: str
    name: str
    tensor_types: dict[str, int] = field(default_factory=dict)  # type name -> number of tensors

    def summary(self) -> str:
        types = ", ".join(f"{n} x{c}" for n, c in sorted(self.tensor_types.items(), key=lambda x: -x[1]))
        return f"{self.path.name}: {self.architecture} '{self.name}', tensors {types}"


def require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ForesightError(INSTALL)


def is_gguf(path: Path) -> bool:
    """True for a ``*.gguf`` file, or a folder holding ``*.gguf`` files and no ``config.json`` (an HF folder wins)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    return path.is_dir() and not (path / "config.json").is_file() and any(path.glob("*.gguf"))


def gguf_file(path: Path) -> Path:
    """The GGUF file named by ``path``: the file itself, or the single ``*.gguf`` in a folder."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            what = "no *.gguf file" if not found else f"{len(found)} *.gguf files ({', '.join(p.name for p in found)})"
            raise ForesightError(f"{path} holds {what}; give the GGUF file itself")
        return found[0]
    if not path.is_file():
        raise ForesightError(f"GGUF file not found: {path}")
    return path


def _supported_types() -> set[str]:
    """Tensor types gguf-py dequantises (F32, F16 natively; the rest through its quant classes)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import _type_traits  # the table gguf.dequantize dispatches on

    return {"F32", "F16"} | {t.name for t in _type_traits if isinstance(t, GGMLQuantizationType)}


def inspect_gguf(path: Path) -> GGUFInfo:
    """Read the header of a GGUF file and refuse, in one line, what the import cannot load exactly."""
    require_gguf()
    from gguf import GGUFReader

    path = gguf_file(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise ForesightError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # gguf-py raises ValueError / IndexError / struct errors on a cut file
        raise ForesightError(f"cannot read {path} ({size} bytes): truncated or damaged GGUF file "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > size:
        raise ForesightError(f"{path} is truncated: its tensors need {end} bytes, the file has {size}")

    def text(key: str, default: str = "") -> str:
        fld = reader.fields.get(key)
        return str(fld.contents()) if fld is not None else default

    arch = text("general.architecture")
    if not arch:
        raise ForesightError(f"{path} has no general.architecture; is it a model GGUF?")
    if arch not in ARCHITECTURES:
        names = ", ".join(f"{v} ({k!r})" for k, v in ARCHITECTURES.items())
        raise ForesightError(f"{path}: GGUF architecture {arch!r} is not supported; foresight imports {names}")
    _check_sizes(path, reader, arch)
    info = GGUFInfo(path, arch, text("general.name", "?"))
    supported = _supported_types()
    for t in reader.tensors:
        name = t.tensor_type.name
        if name not in supported:
            raise ForesightError(f"{path}: tensor {t.name} is stored as {name}, which gguf-py cannot dequantise; "
                                 f"supported types: {', '.join(sorted(supported))}")
        info.tensor_types[name] = info.tensor_types.get(name, 0) + 1
    return info


def _check_sizes(path: Path, reader, arch: str) -> None:
    """The model the header describes (vocabulary = its token list, width, blocks) is within foresight's limits
    and no larger than the tensors the file holds (V x D embedding + ~D²/2 per block, a lower bound), before
    transformers builds it from those numbers."""
    import math

    from foresight.model.limits import MAX_LAYERS, MAX_VOCAB, MAX_WIDTH, check_int

    def number(key: str):
        fld = reader.fields.get(key)
        return fld.contents() if fld is not None else None

    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = len(tokens.data) if tokens is not None else number(f"{arch}.vocab_size")
    width, blocks = number(f"{arch}.embedding_length"), number(f"{arch}.block_count")
    if vocab is None or width is None or blocks is None:
        return  # (transformers names what it misses)
    sizes = []
    for value, name, high in ((vocab, "vocabulary", MAX_VOCAB), (width, f"{arch}.embedding_length", MAX_WIDTH),
                              (blocks, f"{arch}.block_count", MAX_LAYERS)):
        value = int(value) if hasattr(value, "__index__") and not isinstance(value, bool) else value
        sizes.append(check_int(value, f"{path}: {name}", 1, high))
    vocab, width, blocks = sizes
    held = sum(int(math.prod(int(d) for d in t.shape)) for t in reader.tensors)
    needed = vocab * width + blocks * width**2 // 2
    if needed > held:
        raise ForesightError(f"{path}: its header describes a model of at least {needed:,} parameters (vocabulary "
                             f"{vocab:,} x width {width:,}, {blocks} blocks) but its tensors hold "
                             f"{held:,}; the file is damaged or not what it claims")


def load_transformers(path: Path):
    """The transformers model of a GGUF file, dequantised to fp32, in eval mode."""
    require_gguf()
    from transformers import AutoModelForCausalLM

    path = gguf_file(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                     trust_remote_code=False)
    except Exception as e:  # what the header checks did not catch (e.g. a tensor transformers cannot map)
        raise ForesightError(f"transformers cannot load {path} ({type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[0][:160]})") from None
    return model.eval()  # already fp32 (transformers refuses .float() on a model it calls quantised)


def save_tokenizer(path: Path, dst: Path) -> list[str]:
    """Write the GGUF file's tokenizer (as transformers converts it) to ``dst``; returns the file names."""
    from transformers import AutoTokenizer

    path = gguf_file(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
    except Exception as e:
        raise ForesightError(f"cannot read the tokenizer of {path} ({type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[0][:160]})") from None
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")  # written whole, then renamed: never a half-written tokenizer
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return sorted(p.name for p in dst.iterdir() if p.is_file())


def import_gguf(path: Path, objectives: list[dict] | None = None):
    """(``TrainableLM``, specs, report, transformers model) from a GGUF file; ``objectives`` None = NTP alone.

    The transformers model is returned so ``--verify`` compares against it without loading the file twice.
    """
    from foresight.hf.config import from_hf_config
    from foresight.hf.import_ import LoadReport, _load_trunk
    from foresight.hf.weights import hf_key_to_trunk
    from foresight.train.lm import TrainableLM

    info = inspect_gguf(path)
    model = load_transformers(info.path)
    hf_config = model.config.to_dict()
    hf_config.pop("quantization_config", None)  # the weights are already dequantised
    cfg = from_hf_config(hf_config, f"{info.path} (as transformers reads it)")
    specs = objectives if objectives is not None else [{"name": "ntp"}]
    lm = TrainableLM(cfg, specs)
    named = {t: v for k, v in model.state_dict().items() if (t := hf_key_to_trunk(k)) is not None}
    report = LoadReport(str(info.path))
    report.trunk_tensors = _load_trunk(lm, named, str(info.path))
    report.objectives = {k: "fresh" for k, obj in lm.objectives.items() if any(True for _ in obj.parameters())}
    return lm.eval(), specs, report, model


def logit_difference(lm, model, length: int = 11, seed: int = 0) -> float:
    """Max |logits(foresight) - logits(transformers)| on random ids (2, length), both fp32."""
    ids = torch.randint(0, lm.model.cfg.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((lm.model.float().eval()(ids) - model(input_ids=ids).logits).abs().max())
