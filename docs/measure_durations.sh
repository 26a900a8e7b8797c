#!/usr/bin/env bash
# Measures every duration the README and docs state, on this machine, and writes docs/durations.md.
# Run it on a quiet machine (nothing else busy): bash docs/measure_durations.sh [DATA_ZIP]
#   DATA_ZIP: the CIFAR-10 JPEG subset (default ../shared/data/cifar10-jpeg.zip); without it the
#   real-data rows are skipped. Each command is printed beside its figure. Takes about 8 minutes, and
#   the test suite's time on top (SKIP_TEST=1 leaves `make test` out).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/cifar10-jpeg.zip}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
OUTFILE=docs/durations.md
ROWS=()

measure() {  # measure "what" command...: runs the command, records its wall time
  local what=$1; shift
  local t0 t1
  echo ">>> $*" >&2
  t0=$(date +%s.%N)
  "$@" > "$TMP/last.log" 2>&1 || { tail -20 "$TMP/last.log" >&2; echo "FAILED: $*" >&2; exit 1; }
  t1=$(date +%s.%N)
  ROWS+=("| $what | \`$*\` | $(python3 -c "print(f'{$t1 - $t0:.0f} s')") |")
}

make --no-print-directory install > /dev/null
measure "the default study (synthetic, 10 trials of 6 epochs)" make --no-print-directory study RUNS_DIR="$TMP/r1"
measure "a quick study (4 trials of 3 epochs)" make --no-print-directory study TRIALS=4 EPOCHS=3 RUNS_DIR="$TMP/r2"
measure "the report of the default study" make --no-print-directory report RUNS_DIR="$TMP/r1"
measure "one training run (configs/smoke.yaml)" make --no-print-directory train OUT="$TMP/train"
if [ -f "$DATA" ]; then
  for width in 0.25 1.0; do
    # one epoch on 2,500 of the 25,000 training images (val on 1,000): the full epoch is about 10x that
    measure "VGG-19 width $width, one epoch on 2,500 CIFAR-10 JPEG images (x10 = a full 25,000-image epoch)" \
      make --no-print-directory train CONFIG=configs/cifar10-vgg19.yaml OUT="$TMP/w$width" \
      SET="data.name=imagefolder data.root=$DATA data.train_size=2500 data.val_size=1000 model.width_mult=$width train.epochs=1 prune.schedule=none train.progress=false"
  done
fi
if [ -z "${SKIP_TEST:-}" ]; then
  measure "the test suite (lint, import contracts, type check, pytest)" make --no-print-directory test
fi

{
  echo "# Durations, measured"
  echo
  echo "Written by \`bash docs/measure_durations.sh\` on $(date -u +%Y-%m-%d), on a quiet machine with"
  echo "$(nproc) CPU cores ($(python3 -c 'import platform; print(platform.processor() or platform.machine())')), no GPU."
  echo "Every duration the README and the docs state comes from this table; rerun the script to refresh it."
  echo
  echo "| what | command | wall time |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} > "$OUTFILE"
cat "$OUTFILE"
