"""How exactly ``foresight.wrap`` reproduces the models' own numbers, on the six architectures the tests use.

For each tiny random model (float32, CPU; the models and the padded batch of ``tests/wrapper``): |wrap's NTP loss
− the model's own loss|, max |wrap's logits − the model's logits|, and |wrap's TOP loss − the loop-based TOP
definition written in the test|. Prints a markdown table with the machine, versions, date and command;
``--out FILE`` also writes it there.

    PYTHONPATH=src python benchmarks/wrap_exactness.py --out results/wrap/exactness.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "wrapper"))  # the test's models, batch and TOP definition are the baseline

from foresight.environment import describe  # noqa: E402
from foresight.wrapper import wrap  # noqa: E402

from test_wrap_exact import _batch, _top_reference  # noqa: E402
from tiny_models import ARCHS, tiny_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = describe("cpu")
    lines = ["# foresight.wrap against the models' own numbers", "",
             f"{env['device']}, torch {env['torch']}, transformers {__import__('transformers').__version__}, "
             f"commit {env['git_commit']}, {env['date']}; float32; batch B = 3, T = 11 with a left- and a "
             "right-padded row and a masked prompt.", "",
             "Command: `PYTHONPATH=src python benchmarks/wrap_exactness.py --out results/wrap/exactness.md`", "",
             "| architecture | layer class | abs(wrap NTP − model loss) | max abs(Δ logits) | "
             "abs(wrap TOP − definition) |",
             "|---|---|---|---|---|"]
    for arch in ARCHS:
        model = tiny_model(arch)
        ids, mask, labels = _batch()
        wrapped = wrap(model, [{"name": "ntp"}, {"name": "top", "window": 5}])
        with torch.no_grad():
            out = wrapped(ids, attention_mask=mask, labels=labels)
            own = model(ids, attention_mask=mask, labels=labels)
            hidden = model.base_model(ids, attention_mask=mask).last_hidden_state
        top = _top_reference(hidden, wrapped.heads["top"].weight, labels, mask, 5)
        lines.append(f"| {arch} | {type(model.base_model.layers[-1]).__name__} | "
                     f"{abs(out.losses['ntp'] - own.loss).item():.1e} | "
                     f"{(out.logits - own.logits).abs().max().item():.1e} | "
                     f"{abs(out.losses['top'].double() - top).item():.1e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
