"""Heads on a pretrained transformers model (issue 22): first-step losses of random and warm heads, a short
``ForesightTrainer`` run with per-objective logs, and drafting with the wrapped model's own heads.

On SmolLM2-135M-Instruct (the GGUF of ``scripts/fetch_smollm2``, dequantised to fp32 by transformers) and, for
``warm``, also on a tiny Llama trained for 300 steps on arithmetic sequences. Four short texts typed below.
Prints what it measures (the numbers of notes/issue22-heads-logs.md).

    PYTHONPATH=src python benchmarks/wrap_heads_smollm2.py warm     # first-step losses, random vs warm
    PYTHONPATH=src python benchmarks/wrap_heads_smollm2.py train    # 6 Trainer steps, random vs warm heads
    PYTHONPATH=src python benchmarks/wrap_heads_smollm2.py draft    # speculative_generate vs generate
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "wrapper"))

import foresight  # noqa: E402

from tiny_models import tiny_model  # noqa: E402

TEXTS = ["The quick brown fox jumps over the lazy dog. The dog did not move, and the fox ran on into the woods.",
         "Water boils at one hundred degrees Celsius at sea level. At higher altitudes it boils at a lower "
         "temperature.",
         "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
         "Paris is the capital of France. Berlin is the capital of Germany. Madrid is the capital of Spain."]
SPECS = [[{"name": "ntp"}, {"name": "mtp", "n": 3}], [{"name": "ntp"}, {"name": "dsmtp", "depth": 2}],
         [{"name": "ntp"}, {"name": "top", "window": 8}]]


def smollm2():
    from smollm2 import fetch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = fetch()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tok


def first_losses(model, label, ids, mask=None, labels=None) -> None:
    print(f"## {label}: ln V = {math.log(model.config.vocab_size):.2f}")
    for spec in SPECS:
        for init in ("random", "warm"):
            torch.manual_seed(0)
            wrapped = foresight.wrap(model, spec, head_init=init)
            with torch.no_grad():
                out = wrapped(ids, attention_mask=mask, labels=ids if labels is None else labels)
            values = {k: round(float(v), 3) for k, v in {**out.losses, **out.metrics}.items()}
            print(f"{spec[1]['name']:6s} {init:6s} {values}", flush=True)


def warm() -> None:
    torch.manual_seed(0)
    model = tiny_model("llama").train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def batch(n=16, t=24):  # a, a + s, a + 2s, ... (mod 34), s in {1, 2}
        start, step = torch.randint(0, 34, (n, 1)), torch.randint(1, 3, (n, 1))
        return (start + step * torch.arange(t)) % 34 + 3

    for _ in range(300):
        x = batch()
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    first_losses(model.eval(), "tiny Llama (d 16, 2 layers, V 37), 300 NTP steps on arithmetic sequences", batch(32))
    model, tok = smollm2()
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    first_losses(model, "SmolLM2-135M-Instruct, 4 texts", enc.input_ids, enc.attention_mask, labels)


def train() -> None:
    from transformers import TrainingArguments

    model, tok = smollm2()
    ids = [tok(t, return_tensors="pt").input_ids[0][:24] for t in TEXTS]
    data = [{"input_ids": x, "labels": x} for x in ids if len(x) == 24] * 4  # the texts of 24 tokens or more
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for init in ("random", "warm"):
        model.load_state_dict(state)
        torch.manual_seed(0)
        wrapped = foresight.wrap(model, [{"name": "ntp"}, {"name": "top", "window": 8}, {"name": "mtp", "n": 3},
                                         {"name": "dsmtp", "depth": 1}], head_init=init)
        print(f"== {init} heads")
        wrapped.print_trainable_parameters()
        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(out, max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                     learning_rate=1e-4, logging_steps=2, report_to=[], save_strategy="no",
                                     use_cpu=True, disable_tqdm=True)
            trainer = foresight.ForesightTrainer(model=wrapped, args=args, train_dataset=data)
            trainer.train()
        print("total_flos", trainer.state.total_flos, flush=True)


def draft() -> None:
    model, tok = smollm2()
    prompts = [tok(t, return_tensors="pt").input_ids[:, :12] for t in TEXTS]
    for spec in SPECS:
        wrapped = foresight.wrap(model, spec)  # warm heads, untrained
        same, taus, t_spec, t_ref = 0, [], 0.0, 0.0
        for p in prompts:
            t0 = time.perf_counter()
            out, stats = foresight.speculative_generate(wrapped, p, max_new_tokens=40)
            t_spec += time.perf_counter() - t0
            t0 = time.perf_counter()
            ref = model.generate(p, max_new_tokens=40, do_sample=False)
            t_ref += time.perf_counter() - t0
            same += int(torch.equal(out, ref))
            taus.append(round(stats.tau, 2))
        print(f"{spec[1]['name']:6s} warm, untrained: identical to generate {same}/{len(prompts)}; tau per prompt "
              f"{taus}; wall {t_spec:.1f} s against generate {t_ref:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["warm", "train", "draft"])
    {"warm": warm, "train": train, "draft": draft}[parser.parse_args().what]()


if __name__ == "__main__":
    main()
