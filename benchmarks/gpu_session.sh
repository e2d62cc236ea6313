#!/usr/bin/env bash
# The issue #4 (and #3) measurements on one GPU, in numbered parts that each fit a 10-minute command.
#
#   bash benchmarks/gpu_session.sh 1 2     # correctness on CUDA, then the loss-layer benchmark   (~6 min?)
#   bash benchmarks/gpu_session.sh 3       # train_step, 340M: ntp, top, mtp4, dsmtp4               (~5 min?)
#   bash benchmarks/gpu_session.sh 4       # train_step, 1.8B: ntp, top (RUNS_18B=... for more)     (~4 min?)
#   bash benchmarks/gpu_session.sh 5       # 340M TOP text recipe, a few hundred steps, demo corpus  (~6 min?)
#
#   (durations with "?" are estimates: nothing here has run on a GPU yet)
# Parts (every step has its own time limit, so a part ends inside its budget even when a step hangs):
#   1  versions, ahead-of-time compile of the kernels, pytest tests/ops on CUDA (kernels vs their PyTorch twins,
#      the -m gpu tests included), then the -m gpu tests of the rest of the suite    limit 0.5+1.5+3.3+1 min
#   2  benchmarks/loss_layer.py at the four anchor shapes, every method (Liger / Cut-CE rows when installed,
#      see below), then the PyTorch twins on the same GPU                                      limit 2.5 + 1 min
#   3  benchmarks/train_step.py, 340M, the four runs of configs/text/340m.yaml, batch 4 x 4096  limit 6.5 min
#   4  benchmarks/train_step.py, 1.8B, runs $RUNS_18B (default ntp,top)                         limit 8 min
#   5  foresight tokenizer train --demo / prepare --demo (the demo corpus: this Python's standard library,
#      tokenizer of $VOCAB = 32000 ids), then foresight train text/340m --runs top for $STEPS = 300 steps of
#      $BATCH = 16 x 4096 tokens (micro-batch $MICRO = 8); prints tokens/s, MFU, peak memory     limit 1.5 + 6.5 min
# Everything lands under ${OUT:-runs/gpu} (at most 8 files per command, none in sub-folders): partN.log and
# the JSON files. Large things (prepared data, the text run's checkpoints) stay under $WORK (/tmp/foresight-gpu).
#
# Liger-Kernel and cut-cross-entropy are not dependencies: when a folder .whl/ holds their wheels (see
# benchmarks/README.md), they are installed into /tmp/site for this process only (no index needed).
# Environment: PYTHON (default python3), OUT, WORK, RUNS_18B, STEPS, BATCH, MICRO, VOCAB, RECIPE (default
# text/340m; text/tiny with VOCAB=4096 checks part 5 on a CPU), TRAIN_STEP_ARGS (extra train_step.py options).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-runs/gpu}
WORK=${WORK:-/tmp/foresight-gpu}
RUNS_18B=${RUNS_18B:-ntp,top}
STEPS=${STEPS:-300}
BATCH=${BATCH:-16}
MICRO=${MICRO:-8}
VOCAB=${VOCAB:-32000}
RECIPE=${RECIPE:-text/340m}
TRAIN_STEP_ARGS=${TRAIN_STEP_ARGS:-}
# TQDM_DISABLE: no progress bars in the logs (the text run's metrics.jsonl holds every logged step)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=${TQDM_DISABLE:-1}
if [ "$#" -eq 0 ]; then
    sed -n '2,9p' "$0"
    exit 2
fi
mkdir -p "$OUT" "$WORK"

if compgen -G ".whl/*.whl" >/dev/null; then  # optional baselines, carried as wheels
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

FAILED="$WORK/failed-steps"
: >"$FAILED"
# step NAME SECONDS CMD...: run CMD under a time limit (SIGINT first, so pytest and Python print what they have),
# note a failure and go on with the next step. Shell functions run as `bash -c NAME` (exported below).
step() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS rc=0
    timeout -s INT -k 20 "$limit" "$@" || rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0))s"
    if [ "$rc" -ne 0 ]; then echo "$name (exit $rc)" >>"$FAILED"; fi
}

versions() {
    "$PYTHON" - <<'EOF'
import torch, triton, platform
print(f"python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}, "
      f"cuda {torch.version.cuda}, device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
for name in ("liger_kernel", "cut_cross_entropy"):
    try:
        module = __import__(name)
        print(f"{name} {getattr(module, '__version__', 'installed')}")
    except Exception as exc:
        print(f"{name}: not available ({type(exc).__name__})")
EOF
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
}

aot_compile() {
    "$PYTHON" - <<'EOF'
from foresight.ops.kernels import soft_ce_triton, top_targets_triton
print("soft_ce kernels:", list(soft_ce_triton.compile_for_gpu(90, "bf16")))
print("top_targets kernel PTX:", len(top_targets_triton.compile_for_gpu(90)), "characters")
EOF
}

part1() {
    step versions 30 bash -c versions
    step aot-compile 90 bash -c aot_compile
    step pytest-ops 200 "$PYTHON" -m pytest -q -rA -p no:cacheprovider tests/ops
    step pytest-gpu-rest 60 "$PYTHON" -m pytest -q -rA -p no:cacheprovider -m gpu tests --ignore=tests/ops
}

part2() {
    step loss-layer 150 "$PYTHON" benchmarks/loss_layer.py --out "$OUT/loss_layer.json"
    step loss-layer-twin 60 "$PYTHON" benchmarks/loss_layer.py --impl torch \
        --methods top,top_loss,ntp,floor,targets_torch --out "$OUT/loss_layer_twin.json"
}

part3() {
    # shellcheck disable=SC2086  # TRAIN_STEP_ARGS: several options
    step train-step-340m 390 "$PYTHON" benchmarks/train_step.py --models 340m $TRAIN_STEP_ARGS \
        --out "$OUT/train_step_340m.json"
}

part4() {
    # shellcheck disable=SC2086
    step train-step-1.8b 480 "$PYTHON" benchmarks/train_step.py --models 1.8b --runs "$RUNS_18B" $TRAIN_STEP_ARGS \
        --out "$OUT/train_step_1.8b.json"
}

prepare_demo() {
    "$PYTHON" -m foresight tokenizer train --demo --vocab-size "$VOCAB" --out "$WORK/tokenizer-$VOCAB"
    "$PYTHON" -m foresight prepare --demo --tokenizer "$WORK/tokenizer-$VOCAB" --out "$WORK/demo-$VOCAB" --overwrite
}

summarize_text_run() {
    local run_dir=$1
    cp "$run_dir/metrics.jsonl" "$OUT/text_top_metrics.jsonl"
    if [ -f "$run_dir/result.json" ]; then cp "$run_dir/result.json" "$OUT/text_top_result.json"; fi
    "$PYTHON" - "$run_dir/metrics.jsonl" "$OUT/text_top_summary.json" <<'EOF'
import json, os, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
train = [r for r in rows if r.get("kind") == "train"]
evals = [r for r in rows if r.get("kind") == "eval"]
meta = next((r for r in rows if r.get("kind") == "meta"), {})
steady = train[len(train) // 5:] or train  # the first fifth holds compilation and warm-up
def med(key):
    vals = [r[key] for r in steady if r.get(key) is not None]
    return statistics.median(vals) if vals else None
summary = {"steps": train[-1]["step"] if train else 0, "compiled": meta.get("compiled"),
           "tokens_per_s": med("tokens_per_s"), "tflops": med("tflops"), "mfu": med("mfu"),
           "peak_mem_gib": max((r["peak_mem_gib"] for r in train if r.get("peak_mem_gib") is not None), default=None),
           "final_loss": train[-1].get("loss") if train else None,
           "final_top_loss": train[-1].get("top_loss") if train else None,
           "val": evals[-1] if evals else None, "records_used": len(steady)}
fmt = lambda x, spec: "n/a" if x is None else format(x, spec)
print(f"{os.environ.get('RECIPE', 'text/340m')} TOP text run: {summary['steps']} steps, compiled {summary['compiled']}: "
      f"{fmt(summary['tokens_per_s'], ',.0f')} tokens/s, {fmt(summary['tflops'], '.1f')} model TFLOP/s, "
      f"MFU {fmt(summary['mfu'], '.1%')}, peak {fmt(summary['peak_mem_gib'], '.1f')} GiB, "
      f"final loss {fmt(summary['final_loss'], '.3f')} (top {fmt(summary['final_top_loss'], '.3f')})")
json.dump(summary, open(sys.argv[2], "w"), indent=2)
EOF
}

part5() {
    local run_dir="$WORK/text-run"
    rm -rf "$run_dir"
    step prepare-demo 90 bash -c "set -euo pipefail; prepare_demo"
    step text-340m-top 390 "$PYTHON" -m foresight train "$RECIPE" --runs top --out "$run_dir" \
        --set "text.data=$WORK/demo-$VOCAB" --set "train.steps=$STEPS" --set "train.batch_size=$BATCH" \
        --set "train.micro_batch_size=$MICRO" --set train.warmup_steps=30 --set train.log_every=10 \
        --set train.eval_every=0 --set train.ckpt_every=0 --set train.keep_last=1 --set text.val_batches=2
    if [ -f "$run_dir/top/metrics.jsonl" ]; then
        step text-summary 60 bash -c "set -euo pipefail; summarize_text_run $run_dir/top"
    fi
}

export PYTHON OUT WORK VOCAB RECIPE
export -f versions aot_compile prepare_demo summarize_text_run

for part in "$@"; do
    case "$part" in
        1 | 2 | 3 | 4 | 5) "part$part" 2>&1 | tee "$OUT/part$part.log" ;;
        *) echo "unknown part $part (1-5)"; exit 2 ;;
    esac
done
if [ -s "$FAILED" ]; then
    echo
    echo "failed steps:"
    sed 's/^/  /' "$FAILED"
    exit 1
fi
echo
echo "all steps passed; results in $OUT"
