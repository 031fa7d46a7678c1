#!/usr/bin/env bash
# What only a GPU can show, in one command that ends within 8 minutes on an H100 / H200:
#   1. CUDA smoke runs of both scripts (eager; --compile --cudagraphs --bf16 for bro_mt.py, on a dm_control and a
#      MetaWorld task; --cudagraphs for Atari),
#   2. the GPU-only agreement tests (compile, CUDA graphs and bf16 against the eager float32 update),
#   3. the update benchmark of presets 1M-256M in eager / compile / compile+cudagraphs / +bf16, with TFLOP/s,
#   4. torchrun: the distributed tests (gloo) and, on a machine with several GPUs, a NCCL smoke run of bro_mt.py
#      with --compile --bf16 and the steps/s of one GPU against all of them (MT50, 64M critic).
# Run from a checkout where `pip install -r requirements-dev.txt` was done:
#     bash benchmarks/gpu_check.sh
# It prints markdown to paste into benchmarks/RESULTS.md and keeps the full output in gpu_check.log ($OUT/ when
# set, else the current folder). Each phase gets what is left of the time budget (GPU_CHECK_SECONDS, 450 by
# default), so a slow phase cuts the ones after it short instead of running past the limit; benchmark rows are
# printed as they finish, so a cut table still holds every row measured.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${GPU_CHECK_SECONDS:-450}
mkdir -p "${OUT:-.}"
LOG=${OUT:-.}/gpu_check.log
SUMMARY=${OUT:-.}/gpu_check.md
: >"$LOG"
: >"$SUMMARY"
export MUJOCO_GL=${MUJOCO_GL:-egl}
RUNS=$(mktemp -d)

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - SECONDS)); }

# phase NAME MIN_SECONDS COMMAND...: runs COMMAND (output to the log) within the time left; says how it went.
phase() {
    local name=$1 need=$2
    shift 2
    if [ "$(left)" -lt "$need" ]; then
        say "| $name | skipped: $(left) s of the budget left, needs ~$need s | |"
        return
    fi
    local start=$SECONDS
    echo "==== $name: $*" >>"$LOG"
    timeout "$(left)" "$@" >>"$LOG" 2>&1
    local rc=$?
    local status="passed"
    [ $rc -eq 124 ] && status="cut at the time budget"
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="FAILED (exit $rc, see gpu_check.log)"
    say "| $name | $status | $((SECONDS - start)) s |"
}

python - <<'EOF' | tee -a "$SUMMARY"
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check.sh needs a CUDA GPU; torch sees none (on a CPU, run the test suite instead)")
p = torch.cuda.get_device_properties(0)
print(f"## GPU check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}\n")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
git log -1 --format='commit %h (%cs)' 2>/dev/null | tee -a "$SUMMARY"
say ""
say "| check | result | time |"
say "|---|---|---|"

MT_SMOKE="--env-ids cartpole-balance metaworld-reach-v3 --critic-width 512 --batch-size 256 --learning-starts 500 --total-timesteps 1500"
MT_SMOKE="$MT_SMOKE --eval-interval 1500 --eval-episodes 1 --save-minutes 0"
phase "bro_mt.py on CUDA, eager (1,500 steps)" 40 bash -c "cd $RUNS && python $PWD/bro_mt.py $MT_SMOKE"
phase "bro_mt.py --compile --cudagraphs --bf16" 90 \
    bash -c "cd $RUNS && python $PWD/bro_mt.py $MT_SMOKE --compile --cudagraphs --bf16"
phase "bro_atari.py on CUDA --cudagraphs (Pong + Breakout)" 60 bash -c "cd $RUNS && python $PWD/bro_atari.py \
    --env-ids Pong Breakout --model-size 1M --learning-starts 500 --total-timesteps 1200 --buffer-size 5000 \
    --eval-interval 1200 --eval-episodes 1 --save-minutes 0 --cudagraphs"
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -ge 2 ]; then  # NCCL needs a GPU per process
    phase "torchrun: bro_mt.py on $NGPU GPUs, NCCL, MW_MT10 (1,500 steps)" 90 bash -c "cd $RUNS && \
        torchrun --standalone --nproc-per-node $NGPU $PWD/bro_mt.py --env-ids MW_MT10 --critic-width 512 \
        --batch-size 256 --learning-starts 500 --total-timesteps 1500 --eval-interval 1500 --eval-episodes 1 \
        --save-minutes 0 --compile --bf16"
else
    say "| torchrun on several GPUs (NCCL) | skipped: $NGPU GPU here | |"
fi
phase "torchrun: the distributed tests (2 gloo processes on the CPU)" 100 python -m pytest -q -p no:cacheprovider \
    tests/test_distributed.py
phase "agreement tests: compile / CUDA graphs / bf16 vs eager" 90 python -m pytest -q -p no:cacheprovider \
    tests/test_mt_fast.py tests/test_atari_fast.py -k "compile or cudagraphs or cuda_graphs or bf16 or wires"

say ""
say "### bro_mt.py update, dog-sized inputs (obs 223, action 38, 7 tasks), batch 1024"
say ""
for mode in eager cudagraphs bf16 compile; do  # compile last: without CUDA graphs it matters least on a GPU
    if [ "$(left)" -lt 30 ]; then
        say "(mode $mode skipped: the time budget is spent)"
        continue
    fi
    timeout "$(left)" python benchmarks/bench_mt.py --presets 1M 4M 16M 64M 256M --modes $mode --seconds 3 \
        --markdown 2>>"$LOG" | grep -E '^\|' | { [ $mode = eager ] && cat || tail -n +3; } | tee -a "$SUMMARY"
done
say ""
say "cudagraphs = --compile --cudagraphs; bf16 = --compile --cudagraphs --bf16."
if [ "$NGPU" -ge 2 ] && [ "$(left)" -ge 120 ]; then
    say ""
    say "### One GPU against $NGPU (torchrun, NCCL), MW_MT50, 64M critic, batch 1024"
    say ""
    timeout "$(left)" python benchmarks/bench_distributed.py --cuda --settings mt50-gpu --processes "$NGPU" \
        --steps 1200 --learning-starts 600 2>>"$LOG" | grep -E '^\|' | tee -a "$SUMMARY"
fi
say ""
say "Whole check: $SECONDS s."
rm -rf "$RUNS"
