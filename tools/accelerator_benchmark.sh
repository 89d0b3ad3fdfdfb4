#!/usr/bin/env bash
# BERT-large, seq 512, bf16 train-step MFU on one accelerator, in one prepared run (see README "Performance").
#
#   tools/accelerator_benchmark.sh OUT_DIR
#
# bert-jax-benchmark on experiments/bert_large_lamb.py at seq 512 (80 predictions, one microbatch, one device)
# for each batch size in BATCHES: the recipe as it trains (dropout 0.1 everywhere), then without dropout (what
# the dropout masks cost). Each variant gets a time limit (the first one also pays the cold compile caches); a
# failed variant is reported and the next one runs. Every benchmark's JSON line goes to OUT_DIR/results.jsonl.
# Environment knobs (for a dry run on a CPU): CONFIG, SEQ, PREDICTIONS, BATCHES, STEPS, VARIANT_TIMEOUT.
set -u
out=${1:?usage: tools/accelerator_benchmark.sh OUT_DIR}
mkdir -p "$out"
config=${CONFIG:-experiments/bert_large_lamb.py}
seq=${SEQ:-512}
predictions=${PREDICTIONS:-80}
batches=${BATCHES:-"32 64"}
steps=${STEPS:-10}
variant_timeout=${VARIANT_TIMEOUT:-240}
export PYTHONUNBUFFERED=1

(nvidia-smi -L || true; python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())") \
  2>&1 | tee "$out/environment.txt"

run_variant() {
  local name=$1
  shift
  echo "=== $name: $*"
  timeout "$variant_timeout" python3 -m tools.benchmark --config="$config" --config.num_microbatches=1 \
    --config.mesh.data=1 --config.mesh.fsdp=1 --config.mesh.tensor=1 \
    --config.data.max_seq_length="$seq" --config.data.max_predictions_per_seq="$predictions" \
    --steps="$steps" --warmup=2 "$@" >"$out/$name.out" 2>"$out/$name.err"
  local status=$?
  if [ $status -eq 0 ]; then
    tail -n 1 "$out/$name.out" | python3 -c "import json,sys; r=json.load(sys.stdin); r['variant']='$name'; print(json.dumps(r))" \
      >>"$out/results.jsonl"
    python3 -c "import json; r=json.loads(open('$out/results.jsonl').readlines()[-1]); print(f\"{r['variant']}: {r['step_ms_median']:.1f} ms/step, {r['sequences_per_sec']:.1f} seq/s, {r['model_tflops_per_sec']:.1f} TFLOP/s, MFU {r['mfu']:.3f} of {r['peak_flops_per_device']/1e12:.0f} TFLOP/s, compile {r['compile_s']:.0f} s, device peak {r['device_memory_peak_mb']} MB\")"
  else
    echo "$name failed (exit $status):"
    tail -n 5 "$out/$name.err"
  fi
}

for batch in $batches; do
  run_variant "recipe_b$batch" --config.global_batch_size="$batch"
  run_variant "no_dropout_b$batch" --config.global_batch_size="$batch" \
    --config.model.hidden_dropout_prob=0.0 --config.model.attention_probs_dropout_prob=0.0
done
