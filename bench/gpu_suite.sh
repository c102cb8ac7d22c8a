#!/usr/bin/env bash
# The GPU suite: build, test and benchmark on an H100/H200 in steps of under 10 minutes each.
#
#   bash bench/gpu_suite.sh STEP[,STEP...] OUTDIR    STEP: setup | pending | check | test-triton | test-cuda | tests |
#                                                parity | variants | cuda-staged | prefetch | tune | tune-oriented |
#                                                tune-bias | tune-d128 | apply-tuned | apply-variants |
#                                                attention | attention-extra | attention-fp32 | layer | compare | model |
#                                                model-large | profile | ncu | ncu-cuda | all
#   PREBUILT (a folder with the extension an earlier call built) skips the build.
#   TEST_TIMEOUT (seconds per pytest run, default 480) bounds the test steps; TEST_WORKERS (default 8) is the
#   number of pytest-xdist workers, TUNE_JOBS (default 8) the compile processes of the tune steps.
#
# One device call per step. On a fresh machine (cold Triton cache) most of the GPU test modules' time is Triton
# compiling kernels, CPU work done one kernel at a time per process: run serially, the Triton module had passed
# 29 of its 35 tests when a 320 s limit stopped it (all 35 passed in 76 s once its kernels were compiled). So the
# test steps run pytest-xdist workers (installed on the GPU machines) that share the GPU and compile in
# parallel, and `check` runs both modules and the CLI parity check (in the background) in one call. Not yet
# timed that way on a GPU.
#
# Every step starts with `setup` (idempotent): the CUDA extension built in place for sm_90a and the repository put
# on PYTHONPATH (the GPU machines have torch, triton and transformers, and no network), plus any wheels carried in .whl/ (the peer kernels flashdeberta and
# disentangled-flash and einops, for the benchmarks). Logs and JSON go to OUTDIR; copy the JSON into bench/results/
# afterwards and regenerate the tables with bench/report.py.
set -uo pipefail
step=${1:?usage: gpu_suite.sh STEP OUTDIR}
out=${2:?usage: gpu_suite.sh STEP OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

setup() {
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || return 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # sm_90a, not sm_90: the kernels' opt-in wgmma products (DEBERTA_FAST_CUDA_MMA=wgmma) exist only there
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-16}
  # Built in place (no pip: without network pip's editable install would fetch build dependencies); the
  # Triton kernels (kernels/, shipped as deberta_fast.kernels) are linked where the package expects them.
  # A call may carry the extension an earlier call built (PREBUILT: a folder holding its _C*.so, built by the same
  # torch on the same kind of machine) and skip the build (about half a minute of device time in the fifth run).
  if [ -n "${PREBUILT:-}" ] && ls "$PREBUILT"/_C*.so >/dev/null 2>&1; then
    cp "$PREBUILT"/_C*.so deberta_fast/ && echo "deberta_fast: extension from $PREBUILT, not built" >"$out/setup.log"
  else
    $PY setup.py build_ext --inplace >"$out/setup.log" 2>&1 || { tail -50 "$out/setup.log"; return 1; }
  fi
  [ -e deberta_fast/kernels ] || ln -s ../kernels deberta_fast/kernels
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
    $PY -m deberta_fast.cli info
  } 2>&1 | tee -a "$out/setup.log"
}

run_tests() {  # $1: the log's name, then GPU test modules (triton, cuda): one pytest run, xdist workers when installed
  local name=$1 module files=() workers=()
  shift
  for module in "$@"; do files+=("tests/test_gpu_$module.py"); done
  $PY -c "import xdist" 2>/dev/null && workers=(-n "${TEST_WORKERS:-8}")
  logged "$out/test_$name.log" ${TEST_TIMEOUT:-480} 25 $PY -m pytest -q -rfEs --tb=short --durations=10 \
    "${workers[@]}" "${files[@]}" --junitxml="$out/test_$name.xml"
}

run_parity() {  # the CLI's parity check on the GPU (every backend, fp32/bf16/fp16; compiles Triton kernels when cold).
  # Default block configs: with no tuning recorded, autotuning (the unset default) compiles and times every config
  # of every kernel for each dtype, the likely reason it never finished on a GPU (100 s and 400 s limits, beside
  # the test workers in the second); the test modules check every config on their own.
  logged "$out/parity.log" 400 30 env DEBERTA_FAST_TRITON_AUTOTUNE="${DEBERTA_FAST_TRITON_AUTOTUNE:-0}" \
    $PY -m deberta_fast.cli parity --device cuda
}

# logged LOG LIMIT LINES CMD...: CMD under a time limit with its output in LOG, not through a pipe (torch.compile's
# worker processes outlive a timed-out command and would hold a pipe, and the step, open until the device
# call's own limit); then LOG's last LINES lines without progress bars. Returns CMD's status.
logged() {
  local log=$1 limit=$2 lines=$3
  shift 3
  timeout -k 10 "$limit" "$@" >"$log" 2>&1 </dev/null
  local rc=$?
  grep -v "it/s" "$log" | tail -"$lines"
  return $rc
}

# bench LOG LIMIT LINES SCRIPT ARGS...: a benchmark script through `logged`. Triton runs its default block
# configs unless DEBERTA_FAST_TRITON_AUTOTUNE=1 is set (autotuning multiplies the compile time; the JSON
# records the setting in env.settings).
bench() {
  local log=$1 limit=$2 lines=$3
  shift 3
  logged "$log" "$limit" "$lines" env DEBERTA_FAST_TRITON_AUTOTUNE="${DEBERTA_FAST_TRITON_AUTOTUNE:-0}" $PY "$@"
}

run_profile() {  # where the fused backends' time goes, and which host-device synchronizations they make
  for backend in triton cuda; do
    logged "$out/profile_$backend.log" 150 40 $PY bench/profile_attention.py --backend $backend --seqlens 128,512,4096 \
      --sync-debug --out "$out"
  done
  return 0
}

run_ncu() {  # Nsight Compute on the Triton kernels (N 512: every tile a band tile), one launch of each, full set
  local kernel
  for kernel in _dq_kernel _dkdv_kernel _attn_fwd_kernel; do
    logged "$out/ncu_$kernel.log" 170 30 env DEBERTA_FAST_TRITON_AUTOTUNE=0 ncu --kernel-name "regex:^$kernel\$" \
      --launch-skip 2 --launch-count 1 --set full $PY bench/profile_attention.py --backend triton --seqlens 512 \
      --no-profiler
  done
  return 0
}

run_ncu_cuda() {  # the same for the cuda kernels at N 2048 (as in the sixth run, bench/results/h100_2026-11-23/);
  # DEBERTA_FAST_CUDA_BAND / DEBERTA_FAST_CUDA_FWD_TILES in the environment select the kernels profiled
  local kernel
  for kernel in attention_fwd_kernel attention_dkdv_kernel attention_dq_kernel; do
    logged "$out/ncu_$kernel.log" 90 30 ncu --kernel-name "regex:$kernel" --launch-skip 2 --launch-count 1 \
      --set full $PY bench/profile_attention.py --backend cuda --seqlens 2048 --no-profiler
  done
  return 0
}

run_cuda_staged() {  # the cuda backend with its band tiles' C2P / P2C gathered (default) and staged in shared
  # memory (DEBERTA_FAST_CUDA_BAND=staged, df-cuda-staged; csrc/README.md), the forward's opt-in tiles
  # (DEBERTA_FAST_CUDA_FWD_TILES; the -128x32 / -64x64 providers) and the wgmma products (DEBERTA_FAST_CUDA_MMA;
  # the -wgmma providers, plain attention too), against Triton and the floor, D 64 and 128. Not part of `auto`'s
  # choice. (ncu of the staged kernels: DEBERTA_FAST_CUDA_BAND=staged bash bench/gpu_suite.sh ncu-cuda)
  local providers=df-cuda,df-cuda-staged,df-cuda-staged-128x32,df-cuda-staged-64x64,df-cuda-64x64,df-cuda-wgmma
  providers+=,df-cuda-wgmma-staged,df-cuda-plain,df-cuda-wgmma-plain,df-triton,df-triton-plain,sdpa-floor
  bench "$out/cuda_staged.log" 300 40 bench/attention.py --device cuda --dtype bfloat16 --levels op \
    --seqlens 512,1024,2048,4096,8192 --modes fwd,fwd_bwd --rep 20 --op-providers "$providers" \
    --out "$out/attention_cuda_bfloat16_staged.json"
  local rc=$?
  bench "$out/cuda_staged_d128.log" 120 40 bench/attention.py --device cuda --dtype bfloat16 --levels op \
    --head-dim 128 --seqlens 512,2048,8192 --modes fwd --rep 20 \
    --op-providers df-cuda,df-cuda-staged,df-cuda-staged-64x64,df-triton,sdpa-floor \
    --out "$out/attention_cuda_bfloat16_d128_staged.json"
  return $(( rc || $? ))
}

run_pending() {  # what changed since the last GPU run, sized for a 15-minute device budget: one call of about
  # 5 minutes on a fresh machine (the build, both test modules, three short benchmarks; their limits add up to 450 s)
  # that leaves time for a second on the warm machine. Both GPU test modules (the default cuda forward with dropout
  # compiled in or out, the staged slabs, the forward tile shapes, wgmma; the Triton prefetch), then bf16, D 64:
  # the prefetch switch against the defaults and the floor, then the cuda opt-ins, each kind in a run of its own.
  TEST_TIMEOUT=${TEST_TIMEOUT:-240} run_tests gpu triton cuda
  local rc=$?
  op_run "$out/bench.log" 100 pending 512,2048,8192 sdpa-floor,df-triton,df-triton-noprefetch,df-cuda,df-cuda-plain \
    || rc=1
  op_run "$out/bench.log" 50 wgmma 2048,8192 df-cuda,df-cuda-wgmma,df-cuda-wgmma-plain || rc=1
  op_run "$out/bench.log" 60 staged 2048,8192 df-cuda,df-cuda-staged,df-cuda-staged-64x64,df-cuda-wgmma-staged || rc=1
  return $rc
}

# op_run LOG LIMIT NAME SEQLENS PROVIDERS: one op-level run of bench/attention.py (bf16, D 64, fwd and fwd+bwd) into
# OUTDIR/attention_cuda_bfloat16_NAME.json, its output appended to LOG (a call returns at most 8 files). Kernels never
# run on a GPU go in runs of their own: one that faults leaves a sticky CUDA error that fails every later case of
# its process, so it costs its own run's rows, not the baseline's.
op_run() {
  local log=$1 limit=$2 name=$3 seqlens=$4 providers=$5
  bench "$out/op_run_$name.log" "$limit" 24 bench/attention.py --device cuda --dtype bfloat16 --levels op \
    --seqlens "$seqlens" --modes fwd,fwd_bwd --rep 20 --op-providers "$providers" \
    --out "$out/attention_cuda_bfloat16_$name.json"
  local rc=$?
  { echo "== $name ($providers): exit $rc"; cat "$out/op_run_$name.log"; } >>"$log"
  rm -f "$out/op_run_$name.log"
  return $rc
}

run_tune() {  # $1: head dim, $2: band mode. Every Triton block config timed, one kernel at a time
  # (bench/tune_triton.py); then `python bench/make_tuned.py JSON...` (here, after copying the JSON to
  # bench/results/ and listing it in the script's SOURCES) makes kernels/tuned.py, the defaults used when
  # autotuning is off. 33 configs a shape at head dim 64 (12 forward, 7 for each backward kernel and the fused
  # one), compiled first by TUNE_JOBS processes side by side.
  local name="triton_configs_cuda_bfloat16_d$1$( [ "$2" = gather ] || echo "_$2" )"
  logged "$out/tune_d$1_$2.log" 540 40 $PY bench/tune_triton.py --device cuda --dtype bfloat16 --head-dims "$1" \
    --band "$2" --seqlens 512,2048,8192 --jobs "${TUNE_JOBS:-8}" --out "$out/$name.json"
}

run_variants() {  # the Triton switches side by side (default configs): band gathers on the kernel's tile, on
  # tiles oriented per term, or the precomputed band bias (DEBERTA_FAST_TRITON_BAND), split vs fused backward
  # (DEBERTA_FAST_TRITON_BACKWARD), against the floor. Run `tune-oriented` and `apply-tuned` first: without
  # tuned configs of its own the oriented mode runs the prune filter's first config of each kernel.
  # Committed and listed in bench/make_selection.py's SOURCES, the JSON becomes the backend's per-shape choice.
  local providers=df-triton-gather,df-triton-bias,df-triton-fused,df-triton-bias-fused
  providers+=,df-triton-oriented,df-triton-oriented-fused,df-triton-plain,sdpa-floor
  bench "$out/variants.log" 540 40 bench/attention.py --device cuda --dtype bfloat16 --levels op \
    --seqlens 512,2048,8192 --modes fwd,fwd_bwd --rep 20 --op-providers "$providers" \
    --out "$out/attention_cuda_bfloat16_variants.json"
}

run_prefetch() {  # the Triton kernels with their INNER band tiles' position terms loaded one tile ahead (the
  # default) and where used (DEBERTA_FAST_TRITON_PREFETCH=0, df-triton-noprefetch), against the floor, D 64
  bench "$out/prefetch.log" 300 40 bench/attention.py --device cuda --dtype bfloat16 --levels op \
    --seqlens 512,1024,2048,4096,8192 --modes fwd,fwd_bwd --rep 20 \
    --op-providers df-triton,df-triton-noprefetch,df-triton-plain,sdpa-floor \
    --out "$out/attention_cuda_bfloat16_prefetch.json"
}

run_attention() {
  # Two runs that fit one call: the op level over N 128..16384 (both fused backends, SDPA + bias, the floor, and
  # both kernels on the floor's plain attention; about 1.5 minutes at 5 sequence lengths on an H100 with default
  # Triton configs before the plain providers were added), then whole attention layers against transformers'
  # eager layer and the peer kernels at three lengths.
  bench "$out/attention.log" 300 40 bench/attention.py --device cuda --dtype bfloat16 --levels op --rep 20 \
    --op-providers df-triton,df-cuda,sdpa-bias,sdpa-floor,df-triton-plain,df-cuda-plain \
    --out "$out/attention_cuda_bfloat16.json"
  local rc=$?
  bench "$out/attention_layer.log" 230 40 bench/attention.py --device cuda --dtype bfloat16 --levels layer \
    --seqlens 512,2048,8192 --layer-providers hf-eager,df-triton,df-cuda,flashdeberta,disentangled-flash \
    --rep 10 --out "$out/attention_layer_cuda_bfloat16.json"
  return $(( rc || $? ))
}

run_layer() {  # the attention layer against transformers and both peers at every N of the op level (the
  # attention step's layer run has three lengths; issue 5's peer target names N 128 to 16384), and deberta_fast's
  # torch backend (timed on a GPU in the model runs only, never at the attention level), a call of its own
  bench "$out/attention_layer_all.log" 540 40 bench/attention.py --device cuda --dtype bfloat16 --levels layer \
    --seqlens 128,256,512,1024,2048,4096,8192,16384 --modes fwd,fwd_bwd \
    --layer-providers hf-eager,df-triton,df-torch,flashdeberta,disentangled-flash --rep 10 \
    --out "$out/attention_layer_cuda_bfloat16_all.json"
}

run_attention_extra() {  # the other cases issue 5 names: a padded batch, fp16, head dim 128 (op level)
  local rc=0
  for spec in "bfloat16 64 --padded" "float16 64" "bfloat16 128"; do
    set -- $spec
    local name="attention_cuda_$1${3:+_padded}$( [ "$2" = 64 ] || echo "_d$2" )"
    bench "$out/$name.log" 170 16 bench/attention.py --device cuda --dtype $1 --head-dim $2 ${3:-} --levels op \
      --seqlens 512,2048,8192 --modes fwd,fwd_bwd --op-providers df-triton,df-cuda,sdpa-bias,sdpa-floor --rep 20 \
      --out "$out/$name.json" || rc=1
  done
  return $rc
}

run_compare() {  # the Triton kernels before and after a change: the same op benchmark at commit BASE (default
  # b3ca082, the code before the saturated-tile fold and the inner band tiles; N from COMPARE_SEQLENS, default
  # 512,2048,8192) and at this tree, one after the other
  # in one call (the same GPU, clocks and inputs). The base runs from a `git archive` of BASE, without the CUDA
  # extension; its JSON records BASE in env.settings (DEBERTA_FAST_COMPARE_BASE).
  local base=${BASE:-b3ca082} tree=/tmp/deberta_fast_base rc
  rm -rf "$tree" && mkdir -p "$tree"
  if [ -n "${BASE_TREE:-}" ]; then  # the base as a directory (a carried `git archive` of a commit the device's
    cp -r "$BASE_TREE"/. "$tree"/  # copy of .git lacks: it is the copy from the session's start)
  else
    git archive "$base" | tar -x -C "$tree" || { echo "no commit $base"; return 1; }
  fi
  ln -s ../kernels "$tree/deberta_fast/kernels"
  local args=(--device cuda --dtype bfloat16 --levels op --seqlens "${COMPARE_SEQLENS:-512,2048,8192}" --modes fwd,fwd_bwd
              --rep 20)
  PYTHONPATH="$tree:$PYTHONPATH" DEBERTA_FAST_COMPARE_BASE=$base bench "$out/compare_base.log" 200 12 \
    "$tree/bench/attention.py" "${args[@]}" --op-providers df-triton,sdpa-floor --out "$out/attention_compare_base.json"
  rc=$?
  bench "$out/compare_head.log" 200 12 bench/attention.py "${args[@]}" \
    --op-providers df-triton,df-triton-plain,sdpa-floor --out "$out/attention_compare_head.json"
  return $(( rc || $? ))
}

run_attention_fp32() {  # float32 (op level; Triton's dots exact unless torch allows TF32; the floor is SDPA's
  # memory-efficient backend, flash takes no float32), a call of its own
  bench "$out/attention_cuda_float32.log" 400 16 bench/attention.py --device cuda --dtype float32 --levels op \
    --seqlens 512,2048,8192 --modes fwd,fwd_bwd --op-providers df-triton,df-cuda,sdpa-bias,sdpa-floor --rep 10 \
    --out "$out/attention_cuda_float32.json"
}

# The model steps: N from MODEL_SEQLENS / LARGE_SEQLENS, time limits MODEL_LIMIT / LARGE_LIMIT (seconds; lower
# them to run both steps in one call). bench/model.py rewrites its JSON after every case, so a step stopped at
# its limit keeps the cases it finished.
run_model() {  # v3-base at N 128..4096 (N 512 and 2048 alone took about a minute on an H100)
  bench "$out/model.log" "${MODEL_LIMIT:-560}" 40 bench/model.py --device cuda --dtype bfloat16 --configs v3-base \
    --seqlens "${MODEL_SEQLENS:-128,512,2048,4096}" --out "$out/model_cuda_bfloat16.json"
}

run_model_large() {  # v3-large (two lengths by default, a call of its own)
  bench "$out/model_large.log" "${LARGE_LIMIT:-560}" 40 bench/model.py --device cuda --dtype bfloat16 \
    --configs v3-large --seqlens "${LARGE_SEQLENS:-512,2048}" --out "$out/model_cuda_bfloat16_large.json"
}

# apply-tuned / apply-variants: this call's tuning runs / variants run added to the committed ones in the device's
# copy of kernels/tuned.py / deberta_fast/backends/measured.py, so later steps of the same call run with them
# (nothing is committed from the device: rerun the generators here over the returned JSON, then commit).
run_apply() {  # $1: generator script, then the JSON of this call to add
  local script=$1 runs=()
  shift
  for f in "$@"; do [ -e "$f" ] && runs+=("$f"); done
  [ ${#runs[@]} -gt 0 ] || { echo "nothing to apply: no $* in $out"; return 1; }
  $PY "bench/$script" --add "${runs[@]}"
}

run_check() {  # both GPU test modules and the CLI parity check, side by side
  run_parity >"$out/parity_tail.txt" 2>&1 &
  local parity=$! r p
  run_tests gpu triton cuda
  r=$?
  wait $parity
  p=$?
  cat "$out/parity_tail.txt"
  return $(( r || p ))
}

run_step() {
  case "$1" in
    setup) ;;
    check) run_check ;;
    pending) run_pending ;;
    test-triton) run_tests triton triton ;;
    test-cuda) run_tests cuda cuda ;;
    tests) run_tests gpu triton cuda ;;
    parity) run_parity ;;
    variants) run_variants ;;
    cuda-staged) run_cuda_staged ;;
    prefetch) run_prefetch ;;
    tune) run_tune 64 gather ;;
    tune-bias) run_tune 64 bias ;;
    tune-oriented) run_tune 64 oriented ;;
    tune-d128) run_tune 128 gather ;;
    apply-tuned) run_apply make_tuned.py "$out"/triton_configs_cuda_bfloat16_d*.json ;;
    apply-variants) run_apply make_selection.py "$out/attention_cuda_bfloat16_variants.json" ;;
    attention) run_attention ;;
    attention-extra) run_attention_extra ;;
    attention-fp32) run_attention_fp32 ;;
    layer) run_layer ;;
    compare) run_compare ;;
    model) run_model ;;
    model-large) run_model_large ;;
    profile) run_profile ;;
    ncu) run_ncu ;;
    ncu-cuda) run_ncu_cuda ;;
    all) run_tests gpu triton cuda; run_parity; run_attention; run_model ;;
    *) echo "unknown step $1" >&2; return 2 ;;
  esac
}

# STEP may name several steps, comma-separated ("tune,tune-bias"): run in order in one call (one setup), each
# under its own time limit; the status is the first failure's. Their limits must add up to less than the call's.
setup || exit 1
status=0
IFS=, read -ra steps <<<"$step"
for s in "${steps[@]}"; do
  echo "== $(date -u +%T) $s"
  run_step "$s" || { r=$?; [ $status -ne 0 ] || status=$r; }
done
exit $status
