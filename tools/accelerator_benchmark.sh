#!/usr/bin/env bash
# BERT-large, seq 512, bf16 train-step MFU on one accelerator, in one prepared run (see docs/performance.md).
#
#   tools/accelerator_benchmark.sh OUT_DIR
#
# bert-jax-benchmark on experiments/bert_large_lamb.py at seq 512 (80 predictions, one microbatch, one device)
# for each batch size in BATCHES: the recipe as it trains (dropout 0.1 everywhere), then without dropout (what
# the dropout masks cost). For the first batch size also: the recipe with JAX_THREEFRY_GPU_KERNEL_LOWERING=1
# (threefry as one CUDA kernel instead of ~13 XLA fusions per random draw: the train-state init draws ~150
# arrays, which is the suspect for its 64-73 s on an H200; dropout masks use it too), and the recipe with
# --profile_dir (the per-op table, OUT_DIR/profile). Each variant gets a time limit (the first one also pays the
# cold compile caches); a failed variant is reported and the next one runs. Every benchmark's JSON line goes to
# OUT_DIR/results.jsonl. Environment knobs (for a dry run on a CPU): CONFIG, SEQ, PREDICTIONS, BATCHES, STEPS,
# VARIANT_TIMEOUT, EXTRAS (0: only the recipe and no-dropout variants).
set -u
out=${1:?usage: tools/accelerator_benchmark.sh OUT_DIR}
mkdir -p "$out"
config=${CONFIG:-experiments/bert_large_lamb.py}
seq=${SEQ:-512}
predictions=${PREDICTIONS:-80}
batches=${BATCHES:-"64 32"}
extras=${EXTRAS:-1}
steps=${STEPS:-10}
variant_timeout=${VARIANT_TIMEOUT:-240}
export PYTHONUNBUFFERED=1

(nvidia-smi -L || true; python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())") \
  2>&1 | tee "$out/environment.txt"

run_variant() {
  local name=$1
  shift
  echo "=== $name: $*"
  timeout "$variant_timeout" env ${VARIANT_ENV:-} python3 -m tools.benchmark --config="$config" --config.num_microbatches=1 \
    --config.mesh.data=1 --config.mesh.fsdp=1 --config.mesh.tensor=1 \
    --config.data.max_seq_length="$seq" --config.data.max_predictions_per_seq="$predictions" \
    --steps="$steps" --warmup=2 "$@" >"$out/$name.out" 2>"$out/$name.err"
  local status=$?
  if [ $status -eq 0 ]; then
    tail -n 1 "$out/$name.out" | python3 -c "import json,sys; r=json.load(sys.stdin); r['variant']='$name'; print(json.dumps(r))" \
      >>"$out/results.jsonl"
    python3 -c "import json; r=json.loads(open('$out/results.jsonl').readlines()[-1]); print(f\"{r['variant']}: {r['step_ms_median']:.1f} ms/step, {r['sequences_per_sec']:.1f} seq/s, {r['model_tflops_per_sec']:.1f} TFLOP/s, MFU {r['mfu']:.3f} of {r['peak_flops_per_device']/1e12:.0f} TFLOP/s, init {r['init_s']:.0f} s, compile {r['compile_s']:.0f} s, device peak {r['device_memory_peak_mb']} MB\")"
  else
    echo "$name failed (exit $status):"
    tail -n 5 "$out/$name.err"
  fi
}

first=1
for batch in $batches; do
  run_variant "recipe_b$batch" --config.global_batch_size="$batch"
  if [ "$first" = 1 ] && [ "$extras" = 1 ]; then
    VARIANT_ENV="JAX_THREEFRY_GPU_KERNEL_LOWERING=1" run_variant "threefry_kernel_b$batch" \
      --config.global_batch_size="$batch"
    run_variant "profile_b$batch" --config.global_batch_size="$batch" --profile_dir="$out/profile"
  fi
  run_variant "no_dropout_b$batch" --config.global_batch_size="$batch" \
    --config.model.hidden_dropout_prob=0.0 --config.model.attention_probs_dropout_prob=0.0
  first=0
done
