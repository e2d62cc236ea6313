"""Which shortcut did a star-graph model learn? Forward edge-following or a backward lookup from the goal.

Issue 13: at the demo setting (G(2,4)) an NTP model whose v1 is at chance can still produce two kinds of
wrong answer. The "Clever Hans" shortcut of Bachmann & Nagarajan (§3, the TOP paper §5.3) follows edges
forward from whatever it wrote last, so a wrong v1 gives a valid wrong arm. A model that instead reads the
tail back from the goal (v2 = the goal's parent, a one-hop lookup) writes the true v2 after a wrong v1: an
invalid path. Greedy metrics cannot tell the mechanism apart from a coin flip, so this probe feeds the model
teacher-forced answers with v1 replaced by the *other* child of the source (the distractor arm) and asks
what it predicts next:

- ``v2 = child(v1')``: it follows the edge out of the token it was given (forward shortcut);
- ``v2 = parent(goal)``: it ignores the given v1 and looks back from the goal (backward lookup);
and, with the distractor arm's v2' given as well, whether the last token is the distractor's leaf (forward)
or the goal (copied from the prompt).

    python benchmarks/stargraph_probe.py RUN_DIR [RUN_DIR ...] --out results/stargraph-cpu/probe/probe.json

Each RUN_DIR is a ``foresight stargraph run`` cell folder (its last checkpoint is read) of a G(d, 4) recipe;
the test set is regenerated from the checkpoint's recipe (``stargraph`` section: data seed, sizes).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from foresight.data.stargraph import StarGraphSpec
from foresight.environment import describe
from foresight.eval.stargraph import greedy_paths, valid_arms
from foresight.tasks.stargraph import StarGraphTaskConfig, load_split
from foresight.train.lm import TrainableLM


def children_of(prefixes: torch.Tensor, nodes: torch.Tensor, spec: StarGraphSpec) -> torch.Tensor:
    """prefixes (B, P), nodes (B,) -> (B, d) the children of each node in the edge list (-1 where fewer)."""
    e = spec.n_edges
    parents = prefixes[:, 0 : 3 * e : 3]  # (B, E)
    kids = prefixes[:, 1 : 3 * e : 3]  # (B, E)
    hit = parents == nodes[:, None]  # (B, E)
    out = torch.full((prefixes.shape[0], spec.deg), -1, dtype=torch.long)
    for b in range(prefixes.shape[0]):
        found = kids[b][hit[b]]
        out[b, : len(found)] = found
    return out


@torch.no_grad()
def probe(run_dir: Path) -> dict:
    ckpts = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if p.suffix in (".pt", ".safetensors"))
    if not ckpts:
        raise SystemExit(f"{run_dir}: no checkpoints/step_*; give a finished stargraph cell folder")
    lm, state = TrainableLM.from_checkpoint(ckpts[-1])
    recipe = state["config"]["recipe"]
    task = StarGraphTaskConfig(**recipe["stargraph"])
    spec = task.spec()  # with TRELAWNEY the vocabulary also holds <T> and </T>
    if spec.path != 4:
        raise SystemExit(f"{run_dir}: the probe is written for paths of 4 nodes (s, v1, v2, goal), got {spec.path}")
    test = load_split(task, spec, "test")
    prefixes, paths = test.prefixes, test.paths  # (B, P), (B, 4): s, v1, v2, goal
    model = lm.model.eval()

    out = greedy_paths(model, prefixes, spec.path)  # (B, 4)
    valid = valid_arms(out, prefixes, spec)
    wrong_v1 = out[:, 1] != paths[:, 1]
    true_tail = (out[:, 2:] == paths[:, 2:]).all(1)

    # Teacher forcing with the distractor arm: v1' = the source's other child, v2' = v1''s child.
    src, goal = paths[:, 0], paths[:, 3]
    first = children_of(prefixes, src, spec)  # (B, d)
    v1_alt = torch.where(first[:, 0] != paths[:, 1], first[:, 0], first[:, 1])  # (B,) for d = 2
    v2_alt = children_of(prefixes, v1_alt, spec)[:, 0]  # (B,) each arm is a simple path
    leaf_alt = children_of(prefixes, v2_alt, spec)[:, 0]  # (B,)
    seq = torch.cat([prefixes, src[:, None], v1_alt[:, None], v2_alt[:, None]], dim=1)  # (B, P + 3)
    logits = model(seq)  # (B, P + 3, V)
    after_v1 = logits[:, -2].argmax(-1)  # prediction of the v2 slot given s, v1'
    after_v2 = logits[:, -1].argmax(-1)  # prediction of the last slot given s, v1', v2'
    # And the true path teacher-forced: the training task (≈ 100 % under either shortcut).
    tf = model(torch.cat([prefixes, paths[:, :3]], dim=1))[:, -4:].argmax(-1)  # (B, 4)

    rate = lambda m: round(float(m.float().mean()), 4)  # noqa: E731
    return {
        "run_dir": str(run_dir), "checkpoint": ckpts[-1].name, "objectives": state["config"].get("objectives"),
        "seed": recipe.get("train", {}).get("seed"), "n": len(paths),
        "greedy": {"per_position_acc": [rate(out[:, i] == paths[:, i]) for i in range(4)], "valid_arm": rate(valid),
                   "wrong_v1": rate(wrong_v1), "wrong_v1_true_tail": rate(wrong_v1 & true_tail),
                   "wrong_v1_valid_arm": rate(wrong_v1 & valid)},
        "teacher_forced_acc": [rate(tf[:, i] == paths[:, i]) for i in range(4)],
        "given_wrong_v1": {"next_is_child_of_v1": rate(after_v1 == v2_alt),
                           "next_is_goal_parent": rate(after_v1 == paths[:, 2])},
        "given_wrong_v1_v2": {"next_is_distractor_leaf": rate(after_v2 == leaf_alt),
                              "next_is_goal": rate(after_v2 == goal)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="stargraph cell folders (with checkpoints/)")
    p.add_argument("--out", type=Path, help="write the rows (and machine, versions, date) as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for run in args.runs:
        r = probe(run)
        rows.append(r)
        g, a, b = r["greedy"], r["given_wrong_v1"], r["given_wrong_v1_v2"]
        print(f"{run}: greedy v1 {g['per_position_acc'][1]:.1%} valid {g['valid_arm']:.1%}; "
              f"given a wrong v1 -> its child {a['next_is_child_of_v1']:.1%} / the goal's parent "
              f"{a['next_is_goal_parent']:.1%}; then -> distractor leaf {b['next_is_distractor_leaf']:.1%} / goal "
              f"{b['next_is_goal']:.1%}; teacher-forced {r['teacher_forced_acc']}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(json.dumps({"command": shlex.join(["python", *sys.argv]),
                                   **describe(torch.device("cpu")), "rows": rows}, indent=2) + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
