"""``foresight export`` and ``foresight import``: Hugging Face folders out of and into foresight checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from foresight.errors import ForesightError


def register(sub) -> None:
    ex = sub.add_parser("export", help="write a checkpoint as a Hugging Face LlamaForCausalLM folder",
                        description="Write the trunk (with the next-token head) of a checkpoint as a standard Hugging "
                        "Face folder (config.json, model.safetensors, generation_config.json, tokenizer files) that "
                        "transformers.AutoModelForCausalLM.from_pretrained loads without custom code.")
    ex.add_argument("checkpoint", type=Path, metavar="RUN_OR_CHECKPOINT",
                    help="a run folder or a checkpoint (step_*.safetensors, an older step_*.pt, or a step_* folder "
                    "from torchrun)")
    ex.add_argument("--out", type=Path, required=True, help="output folder")
    ex.add_argument("--with-heads", action="store_true", help="also write the TOP / MTP heads (foresight_heads."
                    "safetensors) and DS-MTP modules (DeepSeek-V3 layout: num_nextn_predict_layers)")
    ex.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="weight dtype in the files (default float32: bit-exact)")
    ex.add_argument("--tokenizer", type=Path, help="tokenizer folder or tokenizer.json (default: the run's own)")
    ex.add_argument("--force", action="store_true", help="overwrite a model already in --out")
    ex.add_argument("--verify", action="store_true",
                    help="reload with transformers and print the max logit difference against foresight's model")
    ex.set_defaults(func=_export)

    im = sub.add_parser("import", help="turn a local Llama / Qwen2 / Mistral Hugging Face folder or GGUF file into a "
                        "foresight checkpoint", description="Read a local Hugging Face Llama, Qwen2 or Mistral folder, "
                        "or a llama.cpp GGUF file (dequantised to fp32 by transformers; needs foresight[gguf]), "
                        "with no download, and write a foresight checkpoint with the same logits, with the objectives "
                        "to continue training with (new heads are freshly initialised).")
    im.add_argument("hf_dir", type=Path, metavar="HF_DIR_OR_GGUF",
                    help="folder with config.json and *.safetensors, or a *.gguf file (or a folder holding one)")
    im.add_argument("--out", type=Path, required=True,
                    help="output folder (gets step_00000000.safetensors and tokenizer/)")
    im.add_argument("--objectives", help="objectives to attach: names ('ntp,top') or a YAML list "
                    "('[{name: ntp}, {name: top, window: 1024}]'); default: what the folder carries, else ntp")
    im.add_argument("--force", action="store_true",
                    help="replace an earlier import in --out as a whole (a folder holding anything else is refused)")
    im.add_argument("--verify", action="store_true",
                    help="load the source with transformers too and print the max logit difference")
    im.set_defaults(func=_import)


def parse_objectives(text: str | None) -> list[dict] | None:
    """``ntp,top`` or a YAML list of objective specs -> validated specs."""
    import yaml

    from foresight.objectives import parse_objectives as check

    if text is None:
        return None
    from foresight.config import YAMLLimit, safe_yaml

    try:
        value = safe_yaml(text)
    except YAMLLimit as e:
        raise ForesightError(f"--objectives: {e}") from None
    except yaml.YAMLError:
        raise ForesightError(f"--objectives: cannot parse {text!r}; give names (ntp,top) or a YAML list") from None
    if isinstance(value, str):
        value = [{"name": n.strip()} for n in value.split(",") if n.strip()]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise ForesightError("--objectives must be names (ntp,top) or a YAML list of {name: ..., ...} mappings")
    check(value, where="--objectives")  # the recipes' one parse (keys, weight); the checkpoint stores the dicts
    return value


def _export(args: argparse.Namespace) -> None:
    from foresight.hf import export_checkpoint, max_logit_difference

    report = export_checkpoint(args.checkpoint, args.out, with_heads=args.with_heads, dtype=args.dtype,
                               tokenizer=args.tokenizer, force=args.force)
    for w in report.warnings:
        print(f"warning: {w}")
    heads = f"; heads: {', '.join(report.heads)}" if report.heads else ""
    print(f"exported {report.architecture} to {report.out}: {', '.join(report.files)}{heads}")
    if args.verify:
        from foresight.train.lm import TrainableLM

        lm, _ = TrainableLM.from_checkpoint(args.checkpoint)
        print(f"transformers reload: max |logits difference| = {max_logit_difference(lm, args.out):.2e} (fp32)")


def _import(args: argparse.Namespace) -> None:
    from foresight.hf import import_hf, max_logit_difference, save_imported
    from foresight.hf.gguf import is_gguf
    from foresight.hf.import_ import check_import_target
    from foresight.hf.tokenizer import copy_tokenizer, tokenizer_dir

    specs = parse_objectives(args.objectives)
    check_import_target(args.out, args.force)  # before anything is read
    if is_gguf(args.hf_dir):
        return _import_gguf(args, specs)
    lm, specs, report = import_hf(args.hf_dir, specs)
    copied: list[str] = []

    def tokenizer(folder: Path) -> list[str]:
        copied.extend(copy_tokenizer(args.hf_dir, folder) if tokenizer_dir(args.hf_dir) else [])
        return copied

    path = save_imported(lm, specs, args.out, args.hf_dir, tokenizer, force=args.force)
    _print_imported(lm, specs, report, "Qwen2" if lm.model.cfg.qkv_bias else "Llama", args.hf_dir, path)
    print(f"tokenizer: {'copied to ' + str(args.out / 'tokenizer') if copied else 'none found in ' + str(args.hf_dir)}")
    if args.verify:
        print(f"transformers: max |logits difference| = {max_logit_difference(lm, args.hf_dir):.2e} (fp32)")


def _print_imported(lm, specs: list[dict], report, arch: str, source, path, note: str = "") -> None:
    """The two summary lines both import paths print: the model's shape and the objectives with their heads."""
    cfg = lm.model.cfg
    print(f"imported {arch} ({cfg.n_layers} layers, d={cfg.hidden_size}, vocab {cfg.vocab_size}, "
          f"{lm.model.num_parameters() / 1e6:.2f}M parameters{note}) from {source} -> {path}")
    heads = ", ".join(f"{k} {v}" for k, v in report.objectives.items())
    print(f"objectives: {', '.join(s['name'] for s in specs)}" + (f" (heads: {heads})" if heads else ""))


def _import_gguf(args: argparse.Namespace, specs: list[dict] | None) -> None:
    from foresight.hf import save_imported
    from foresight.hf.gguf import ARCHITECTURES, import_gguf, inspect_gguf, logit_difference, save_tokenizer

    info = inspect_gguf(args.hf_dir)
    print(f"reading {info.summary()}")
    lm, specs, report, model = import_gguf(info.path, specs)
    copied: list[str] = []

    def tokenizer(folder: Path) -> list[str]:
        copied.extend(save_tokenizer(info.path, folder))
        return copied

    path = save_imported(lm, specs, args.out, info.path, tokenizer, force=args.force)
    _print_imported(lm, specs, report, ARCHITECTURES[info.architecture], info.path, path, ", fp32")
    print(f"tokenizer: copied to {args.out / 'tokenizer'} ({', '.join(copied)})")
    if args.verify:
        print(f"transformers (GGUF loader): max |logits difference| = {logit_difference(lm, model):.2e} (fp32)")
