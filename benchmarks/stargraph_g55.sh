#!/usr/bin/env bash
# Issue 5 on one GPU: the TOP paper's star-graph recipe on G(5,5), one JSON per finished (objective, seed) cell
# in results/stargraph/, sized to the device tool's 10-minute commands (plan and estimates: notes/issue5.md).
#
#   benchmarks/stargraph_g55.sh RUNS:SEEDS [RUNS:SEEDS ...] [-- more `foresight stargraph run` options]
#   benchmarks/stargraph_g55.sh top,ntp,mtp4,dsmtp4:0 top,ntp:1,2     # the whole plan, in priority order
#
# Groups run in order, each seed-major (top s1, ntp s1, top s2, ...), all under one time limit: a cell that
# would not finish in the time left is not started, and cells whose JSON is already in $RESULTS are skipped,
# so the same line, run again in a new command (with the JSONs of the last one copied back into
# results/stargraph), carries on where the last one stopped.
#
# Environment:
#   RECIPE      paper_budget (default) or paper (the full 7,324-step schedule)
#   STEPS       the step budget; default: the recipe's (paper_budget: 1500). The warm-up is scaled to the
#               paper's share, round(STEPS * 1500 / 7324), and the cosine runs over STEPS
#   TIME_LIMIT  seconds of training this command may use in all (default 540, for a 600-second command)
#   RESULTS     where the cell JSONs go (default results/stargraph)
#   PY          the Python that has torch (default python3); src/ is put on PYTHONPATH, nothing is installed
#   OUT         if set (the device tool sets it), the log and a tarball of the JSONs and metrics go there
set -uo pipefail
cd "$(dirname "$0")/.."
groups=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do groups+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
if [ ${#groups[@]} -eq 0 ]; then
    echo "usage: benchmarks/stargraph_g55.sh RUNS:SEEDS [RUNS:SEEDS ...] [-- options]" >&2
    exit 2
fi
RECIPE=${RECIPE:-paper_budget}
PY=${PY:-python3}
TIME_LIMIT=${TIME_LIMIT:-540}
RESULTS=${RESULTS:-results/stargraph}
sets=()
if [ -n "${STEPS:-}" ]; then
    sets=(--set "train.steps=$STEPS" --set "train.warmup_steps=$(( (STEPS * 1500 + 3662) / 7324 ))")
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=${TQDM_DISABLE:-1}
logdir=${OUT:-runs}
mkdir -p "$logdir"
log=$logdir/stargraph_g55.log
stamp=$(date +%Y%m%d-%H%M%S)
start=$SECONDS
{
    status=0
    $PY -c "import platform, torch; print('python', platform.python_version(), '| torch', torch.__version__, '| cuda',
torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
    i=0
    for group in "${groups[@]}"; do
        i=$(( i + 1 ))
        left=$(( TIME_LIMIT - (SECONDS - start) ))
        if [ "$left" -lt 30 ]; then
            echo "stargraph_g55: ${left}s left, not starting ${group}"
            continue
        fi
        echo "stargraph_g55: ${group} (${left}s left) $(date -u +%FT%TZ)"
        $PY -m foresight stargraph run "$RECIPE" --runs "${group%%:*}" --seeds "${group#*:}" ${sets[@]+"${sets[@]}"} \
            --results "$RESULTS" --skip-existing --time-limit "$left" --out "runs/g55-$stamp-$i" "$@" || status=$?
    done
    echo "stargraph_g55: done in $(( SECONDS - start ))s, exit status $status"
    exit $status
} 2>&1 | tee -a "$log"
status=$?
if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/stargraph_results.tgz" "$RESULTS" $(ls -d runs/g55-"$stamp"-*/*/metrics.jsonl 2>/dev/null) || true
fi
exit $status
