#!/usr/bin/env bash
# The README's first command as a newcomer meets it: a fresh clone of the committed tree, a fresh venv with
# the pip that Python ships (never upgraded), the command read from the README (not retyped), run twice in
# that venv. The second run is what a user does to resume or after pulling a change; it must not break the
# install (a pip that finds `wheel` in the venv once took the legacy `setup.py develop` path and lost the
# `bert_jax_tools` package) and must keep the export.
#
#   .ci/readme_first_command.sh [REPO]        REPO: a git checkout (default: this one)
#   DEMO_OVERRIDES="--config.num_train_steps=20"   appended to the job's flags (the install stays verbatim)
#   DEMO_MIN_MLM_ACCURACY=0.15                     the held-out accuracy the demo must end with (skipped with overrides)
#   DEMO_MIN_MASK_ACCURACY=0.15                    the same at the [MASK] inputs alone: words filled in from context
#                                                  (answering the most frequent word scores 0.05-0.075 there)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "${1:-$here/..}" && pwd)"
overrides="${DEMO_OVERRIDES:-}"
min_accuracy="${DEMO_MIN_MLM_ACCURACY:-0.15}"
min_mask_accuracy="${DEMO_MIN_MASK_ACCURACY:-0.15}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

git -c advice.detachedHead=false clone --quiet "$repo" "$scratch/bert_jax"
cd "$scratch/bert_jax"
readme_command="$(python3 "$here/readme_commands.py" first README.md)"
# The README writes to /tmp/bert_tiny; CI uses a directory of its own so it never touches a user's run.
workdir="$scratch/bert_tiny"
command="${readme_command//\/tmp\/bert_tiny/$workdir}"
[ -n "$overrides" ] && command="$command $overrides"

python3 -m venv .venv
# shellcheck disable=SC1091
source .venv/bin/activate
echo "   $(pip --version | cut -d' ' -f1-2) (as Python ships it), $(python --version)"
echo "   command: $command"

fail() { echo "FAILED: $*" >&2; exit 1; }
for run in 1 2; do
  start=$SECONDS
  bash -c "$command" >"$scratch/run$run.log" 2>&1 || { tail -40 "$scratch/run$run.log"; fail "run $run of the README's first command exited non-zero"; }
  echo "   run $run: exit 0 in $((SECONDS - start)) s"
  for path in export/hf/config.json export/hf/model.safetensors export/hf/vocab.txt export/bert_jax export/step.txt; do
    [ -e "$workdir/$path" ] || fail "run $run left no $workdir/$path"
  done
done
# The second run resumed the finished job: nothing trained, the export kept (not replaced).
grep -q "Nothing to train" "$scratch/run2.log" || { tail -20 "$scratch/run2.log"; fail "run 2 did not resume the finished job"; }
if compgen -G "$workdir/export.replaced-*" >/dev/null; then fail "run 2 replaced the export of run 1"; fi

# The console output is the job's own: none of the third-party chatter a user cannot act on.
for chatter in "Downloading and preparing" "All log messages before absl" $'\x1b[A' "Using custom data configuration" "oneDNN custom operations"; do
  if grep -qF -- "$chatter" "$scratch/run1.log"; then fail "the demo's output contains $(printf %q "$chatter")"; fi
done

if [ -z "$overrides" ]; then
  python - "$workdir/metrics.jsonl" "$min_accuracy" "$min_mask_accuracy" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
evals = [r for r in rows if "eval_mlm_accuracy" in r]
final, at_mask = evals[-1]["eval_mlm_accuracy"], evals[-1]["eval_mlm_accuracy_at_mask"]
print(f"   held-out masked-LM accuracy at step {evals[-1]['step']}: {final:.4f} (needs >= {sys.argv[2]}), "
      f"at [MASK] {at_mask:.4f} (needs >= {sys.argv[3]})")
if final < float(sys.argv[2]):
    raise SystemExit("FAILED: the demo did not learn enough")
if at_mask < float(sys.argv[3]):
    raise SystemExit("FAILED: the demo does not fill in words from context (accuracy at [MASK])")
PY
fi

# Every console script still starts after the second install (its module imports, its flags parse).
python "$here/console_scripts_start.py"
echo "   README's first command: OK twice in a fresh venv"
