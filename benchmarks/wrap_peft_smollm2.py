"""PEFT both ways and TRL SFT on SmolLM2-135M (the GGUF scripts/fetch_smollm2 caches), as a user would run them:
max |Δ logit| and |Δ loss| per objective after save_pretrained -> load (adapter + heads, and merged), the
issue's broken workaround refused, and a short ForesightSFTTrainer run's per-objective logs.

    python benchmarks/wrap_peft_smollm2.py [--gguf PATH] [--out results/wrap/peft-trl-smollm2.md]

CPU, about a minute. The GGUF is dequantised to fp32 and saved once as a plain model folder (transformers will
not save a model it loaded from GGUF), which is the base model every load below reads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

SPECS = [{"name": "ntp"}, {"name": "top", "window": 64, "weight": 0.5}, {"name": "mtp", "n": 2, "weight": 0.3}]
TEXTS = ["def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
         "The quick brown fox jumps over the lazy dog. The dog sleeps on.",
         "Paris is the capital of France, and Berlin is the capital of Germany.",
         "Water boils at 100 degrees Celsius at sea level."]


def _diff(a, b, ids) -> tuple[float, dict[str, float]]:
    with torch.no_grad():
        x, y = a(ids, labels=ids), b(ids, labels=ids)
    return (x.logits - y.logits).abs().max().item(), {k: (x.losses[k] - y.losses[k]).abs().item() for k in x.losses}


def _train(model, ids, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(steps):
        out = model(ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return {k: round(v.item(), 4) for k, v in out.losses.items()}


def _row(name, diff) -> str:
    logit, losses = diff
    return f"| {name} | {logit:.3g} | " + ", ".join(f"{k} {v:.3g}" for k, v in losses.items()) + " |"


def main(argv=None) -> int:
    from smollm2 import gguf_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=gguf_path())
    ap.add_argument("--out", type=Path, default=None, help="write the report (markdown) here too")
    args = ap.parse_args(argv)
    if not args.gguf.is_file():
        print(f"no SmolLM2 GGUF at {args.gguf}; run scripts/fetch_smollm2", file=sys.stderr)
        return 2
    # The saved copies weigh about 2 GB: they live in a folder removed however the run ends.
    with tempfile.TemporaryDirectory(prefix="wrap_peft_smollm2.") as tmp:
        report = _report(args.gguf, Path(tmp))
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report, encoding="utf-8")
    return 0


def _report(gguf: Path, work: Path) -> str:
    """Every round trip and the TRL steps, with the models saved under ``work``: the report (markdown)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import foresight
    from foresight.errors import ForesightError
    from foresight.hf.gguf import load_transformers

    torch.manual_seed(0)
    t0 = time.time()
    gguf_model = load_transformers(gguf)
    base_dir = work / "base"
    config = gguf_model.config
    if hasattr(config, "quantization_config"):  # the GGUF loader's marker: it would make the copy unsaveable too
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.save_pretrained(base_dir)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(base_dir)
    del gguf_model, plain
    stream = tok(" ".join(TEXTS * 2))["input_ids"]
    ids = torch.tensor(stream[:64]).view(2, 32)  # (B, T): two rows of real text

    def base():
        return AutoModelForCausalLM.from_pretrained(base_dir)

    lora = dict(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lines = ["# PEFT and TRL on SmolLM2-135M (Q4_1 GGUF dequantised to fp32), CPU", "",
             f"Objectives {SPECS}; LoRA r=8 on q_proj, v_proj (B initialised at random too); 3 AdamW steps "
             f"(lr 1e-3) on 2 × 32 tokens; then save_pretrained -> load. Command: "
             f"`python benchmarks/wrap_peft_smollm2.py`.", "",
             "| round trip | max abs Δ logit | abs Δ loss per objective |", "|---|---|---|"]

    # 1. PEFT first, then wrap
    wrapped = foresight.wrap(get_peft_model(base(), LoraConfig(**lora)), SPECS)
    lines.append(f"<!-- trained losses (PEFT first): {_train(wrapped, ids)} -->")
    wrapped.save_pretrained(work / "a")
    back = foresight.ForesightModel.from_pretrained(work / "a", base_model=base_dir)
    lines.append(_row("PEFT first: adapter + heads", _diff(wrapped, back, ids)))
    wrapped.merge_and_unload()
    lines.append(_row("PEFT first: merged vs adapter (merge arithmetic)", _diff(wrapped, back, ids)))
    wrapped.save_pretrained(work / "a_merged")
    lines.append(_row("PEFT first: merged", _diff(wrapped, foresight.ForesightModel.from_pretrained(work / "a_merged"),
                                                  ids)))
    del wrapped, back

    # 2. wrap first, then PEFT with the heads in modules_to_save
    inner = foresight.wrap(base(), SPECS)
    pm = get_peft_model(inner, LoraConfig(**lora, modules_to_save=inner.head_module_names))
    lines.append(f"<!-- trained losses (wrap first): {_train(pm, ids)} -->")
    pm.save_pretrained(work / "b")
    back = PeftModel.from_pretrained(foresight.wrap(base(), SPECS), work / "b")
    lines.append(_row("wrap first: adapter + heads (modules_to_save)", _diff(pm, back, ids)))
    merged = pm.merge_and_unload()
    merged.save_pretrained(work / "b_merged")
    lines.append(_row("wrap first: merged", _diff(merged, foresight.ForesightModel.from_pretrained(work / "b_merged"),
                                                  ids)))
    del pm, back, merged, inner

    # 3. the workaround: wrap the PeftModel's inner model
    pm = get_peft_model(base(), LoraConfig(**lora))
    try:
        foresight.wrap(pm.base_model.model, SPECS)
        refused = "NOT refused"
    except ForesightError as e:
        refused = str(e)
    lines += ["", f"`wrap(peft_model.base_model.model, ...)` (the issue's workaround): `{refused}`"]
    del pm

    # 4. TRL: two SFT steps with per-objective logs
    from datasets import Dataset
    from trl import SFTConfig

    wrapped = foresight.wrap(base(), SPECS)
    cfg = SFTConfig(str(work / "sft"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-4,
                    logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False, max_length=64)
    trainer = foresight.ForesightSFTTrainer(model=wrapped, args=cfg, train_dataset=Dataset.from_dict({"text": TEXTS}),
                                            processing_class=tok)
    trainer.train()
    lines += ["", "ForesightSFTTrainer, 2 steps (batch 2, lr 1e-4), the Trainer's log lines:", "", "```"]
    lines += [str({k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()})
              for e in trainer.state.log_history]
    lines += ["```", "", f"Total {time.time() - t0:.0f} s on {os.cpu_count()} CPU threads available, torch "
              f"{torch.__version__}, torch threads {torch.get_num_threads()}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
