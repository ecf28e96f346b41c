#!/usr/bin/env bash
# Evaluates the shipped optimizers and the tuned baselines on the paper's problems, then draws
# the loss curves and the results table of the README ("Reproducing the paper").
#
#   MNIST_DIR=/path/to/mnist [FASHION_DIR=/path/to/fashion-mnist] ./reproduce.sh [problem ...]
#
# PYTHON is the Python to use (default: the README's .venv/bin/python, else python3).
# MNIST_DIR and FASHION_DIR, each a folder of the four IDX files, are optional: without them
# evaluate.py searches as usual (L2L_DATA_DIR/<dataset>/, Debian's dataset-fashion-mnist,
# tensorflow_datasets). They are separate because the two datasets' files have the same names.
# Histories go to results/histories/, plots to results/*.png, the table to results/table.md.
# Every run uses --seed=0: all optimizers see the same problems and batches. About 8 minutes per
# 100-step MNIST-sized problem on one CPU core.
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
GRID=0.0001,0.0003,0.001,0.003,0.01,0.03,0.1,0.3,1,3
SGD_GRID=$GRID,10,30  # Plain SGD's best rate was the top of GRID on quadratic and mnist.
EPOCHS=${EPOCHS:-100}
OUT=results

# problem name in the table, --problem, --num_steps, folder of the shipped optimizers.
CASES=(
  "quadratic quadratic 100 quadratic"
  "mnist mnist 100 mnist"
  "mnist-200-steps mnist 200 mnist"
  "mnist-40 mnist-40 100 mnist"
  "mnist-2layer mnist-2layer 100 mnist"
  "mnist-relu mnist-relu 100 mnist"
  "fashion_mnist fashion_mnist 100 fashion_mnist"
)

names=()
for case in "${CASES[@]}"; do read -r name _ <<< "$case"; names+=("$name"); done
for wanted in "$@"; do  # An unknown case is an error before anything is written.
  if [[ ! " ${names[*]} " =~ " $wanted " ]]; then
    echo "reproduce.sh: unknown case '$wanted'; the cases are: ${names[*]}" >&2
    exit 2
  fi
done
mkdir -p $OUT/histories

evaluate() {  # name, then evaluate.py flags
  local name=$1; shift
  local history=$OUT/histories/$name.csv
  if [ -f "$history" ]; then echo "have $history"; return; fi
  echo "== $name"
  $PYTHON evaluate.py $data --seed=0 --num_epochs=$EPOCHS --history_path="$history" "$@"
}

for case in "${CASES[@]}"; do
  read -r name problem steps saved <<< "$case"
  if [ $# -gt 0 ] && [[ ! " $* " =~ " $name " ]]; then continue; fi
  common=(--problem=$problem --num_steps=$steps)
  if [ $problem = fashion_mnist ]; then dir=${FASHION_DIR:-}; else dir=${MNIST_DIR:-}; fi
  data=${dir:+--data_dir=$dir}
  histories=()
  for kind in L2L fixed learned; do
    case $kind in L2L) file=cw.l2l;; fixed) file=cwfixed0.01.l2l;; learned) file=cwlearned.l2l;; esac
    if [ -f saved_optimizers/$saved/$file ]; then
      evaluate ${name}_$kind "${common[@]}" --optimizer=$kind --path=saved_optimizers/$saved/$file
      histories+=($OUT/histories/${name}_$kind.csv)
    fi
  done
  for baseline in Adam RMSprop SGD NAG; do
    grid=$GRID; if [ $baseline = SGD ]; then grid=$SGD_GRID; fi
    evaluate ${name}_$baseline "${common[@]}" --optimizer=$baseline --learning_rates=$grid
    histories+=($OUT/histories/${name}_$baseline.csv)
  done
  joined=$(IFS=,; echo "${histories[*]}")
  $PYTHON plot.py --histories="$joined" --output=$OUT/$name.png --title="$name ($steps steps)"
  # Each file is written whole under a temporary name, then renamed: a failure keeps the old one.
  { echo; echo "### $name ($steps steps)"; echo; $PYTHON plot.py --histories="$joined" --table; } \
    > $OUT/table_$name.md.tmp
  mv $OUT/table_$name.md.tmp $OUT/table_$name.md
done
for case in "${CASES[@]}"; do  # The table in the order of CASES, with what exists so far.
  read -r name _ <<< "$case"
  if [ -f $OUT/table_$name.md ]; then cat $OUT/table_$name.md; fi
done > $OUT/table.md.tmp
mv $OUT/table.md.tmp $OUT/table.md
echo "Table: $OUT/table.md"
