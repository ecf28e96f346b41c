#!/usr/bin/env bash
# Evaluates the shipped optimizers and the tuned baselines on the paper's problems, and the
# general optimizer on models outside its training families (the heldout-* cases), then draws
# the loss curves and the results table of the README ("Reproducing the paper").
#
#   MNIST_DIR=/path/to/mnist [FASHION_DIR=/path/to/fashion-mnist] ./reproduce.sh [case ...]
#
# PYTHON is the Python to use (default: the README's .venv/bin/python, else python3).
# MNIST_DIR and FASHION_DIR, each a folder of the four IDX files, are optional: without them
# evaluate.py searches as usual (L2L_DATA_DIR/<dataset>/, Debian's dataset-fashion-mnist,
# tensorflow_datasets). They are separate because the two datasets' files have the same names.
# Histories go to results/histories/, plots to results/<case>.png, the table to
# results/table.md: the cases run replace their own sections of it, the others stay as they are.
# A history is reused when its header records exactly the settings asked for, no other (a history
# of another split or reset period is not the table's), and, for a learned optimizer, the
# SHA-256 of the file's content; else it is evaluated again. Runs at once may share results/:
# each replaces its sections of the table under a lock, and no section is lost.
# Every run uses --seed=0: all optimizers see the same problems and batches. About 8 minutes per
# 100-step MNIST-sized problem on one CPU core.
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
GRID=0.0001,0.0003,0.001,0.003,0.01,0.03,0.1,0.3,1,3
SGD_GRID=$GRID,10,30  # Plain SGD's best rate was the top of GRID on quadratic and mnist.
TUNE_EPOCHS=20
EPOCHS=${EPOCHS:-100}
OUT=results

# case name (its section of the table), --problem, --num_steps, folder of the shipped optimizers.
CASES=(
  "quadratic quadratic 100 quadratic"
  "mnist mnist 100 mnist"
  "mnist-200-steps mnist 200 mnist"
  "mnist-40 mnist-40 100 mnist"
  "mnist-2layer mnist-2layer 100 mnist"
  "mnist-relu mnist-relu 100 mnist"
  "fashion_mnist fashion_mnist 100 fashion_mnist"
)

# Cases beyond the paper's, in fewer and longer epochs: name, --problem, --num_steps, the shipped
# optimizers (folders of saved_optimizers/ whose cw.l2l runs at its default learning rate; one
# not shipped is left out), the baselines ("Adam-default": Keras' default, Adam 0.001 untuned;
# "<folder>-tuned": that shipped optimizer with its step scale tuned on validation over
# STEP_SCALES, as a user tunes LearnedOptimizer's learning_rate; the others tuned on validation
# over the group's grid).
# Held-out models (issue 28): the general optimizer, meta-trained on task families that contain
# none of them, against Keras' default optimizer, Adam tuned, and the MNIST optimizer.
HELDOUT_CASES=(
  "heldout-mnist-100 mnist 100 general,mnist Adam-default,Adam,general-tuned"
  "heldout-mnist-relu-500 heldout-mnist-relu 500 general,mnist Adam-default,Adam,general-tuned"
  "heldout-mnist-cnn-500 heldout-mnist-cnn 500 general,mnist Adam-default,Adam,general-tuned"
  "heldout-fashion-relu-500 heldout-fashion-relu 500 general,mnist Adam-default,Adam,general-tuned"
  "heldout-mnist-tanh-500 heldout-mnist-tanh 500 general,mnist Adam-default,Adam,general-tuned"
  "heldout-mnist-500 mnist 500 general,mnist Adam-default,Adam,general-tuned"
  "heldout-mnist-relu-2000 heldout-mnist-relu 2000 general,mnist Adam-default,Adam,general-tuned"
  "heldout-mnist-cnn-2000 heldout-mnist-cnn 2000 general,mnist Adam-default,Adam,general-tuned"
  "heldout-fashion-relu-2000 heldout-fashion-relu 2000 general,mnist Adam-default,Adam,general-tuned"
  "heldout-mnist-tanh-2000 heldout-mnist-tanh 2000 general,mnist Adam-default,Adam,general-tuned"
  "heldout-mnist-2000 mnist 2000 general,mnist Adam-default,Adam,general-tuned"
)
HELDOUT_GRID=0.0001,0.0003,0.001,0.003,0.01,0.03,0.1
STEP_SCALES=0.5,1,2,3,5,8
# Long horizons (issue 29): the MNIST optimizers, 1,000 and 10,000 steps, against every baseline.
LONG_CASES=(
  "mnist-1000-steps mnist 1000 mnist,mnist_long Adam,RMSprop,SGD,NAG"
  "mnist-10000-steps mnist 10000 mnist,mnist_long Adam,RMSprop,SGD,NAG"
)
EPOCHS_BEYOND=${EPOCHS_BEYOND:-10}  # Of the cases beyond the paper's.
TUNE_EPOCHS_BEYOND=5

names=()
for case in "${CASES[@]}" "${HELDOUT_CASES[@]}" "${LONG_CASES[@]}"; do
  read -r name _ <<< "$case"
  names+=("$name")
done
for wanted in "$@"; do  # An unknown case is an error before anything is written.
  if [[ ! " ${names[*]} " =~ " $wanted " ]]; then
    echo "reproduce.sh: unknown case '$wanted'; the cases are: ${names[*]}" >&2
    exit 2
  fi
done
mkdir -p $OUT/histories
# Every output is written whole in here, then renamed into place (the same file system): a
# failure or Ctrl-C keeps the previous file.
tmp=$(mktemp -d "$OUT/.reproduce.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

up_to_date() {  # history, then evaluate.py flags: whether the history is of exactly those settings
  local history=$1 header flag field
  header=" $(head -n 1 "$history") "  # evaluate.py's '# optimizer=... problem=... ...' line.
  shift
  for flag in "$@"; do
    [[ $header == *" ${flag#--} "* ]] || return 1
    # The optimizer file's content, as evaluate.py records it: a replaced file is evaluated
    # again, a file only touched (a checkout, a copy) is not.
    if [[ $flag == --path=* ]]; then
      [[ $header == *" sha256=$(sha256sum "${flag#--path=}" | cut -c1-16) "* ]] || return 1
    fi
  done
  for field in $header; do  # And nothing else defines it: every setting recorded was asked for.
    case $field in
      # How it ran or what it found: the compilation, the tuned rate, the file's digest, lambda.
      mode=*|learning_rate=*|sha256=*|fixed_lambda=*) ;;
      # A tuned step scale is what the grid found; any other was asked for.
      step_scale=*) [[ $header == *" step_scales="* || " $* " == *" --$field "* ]] || return 1;;
      *=*) [[ " $* " == *" --$field "* ]] || return 1;;
    esac  # Other words are prose ("chosen from ... on ... validation epochs").
  done
}

evaluate() {  # name, then the evaluate.py flags that define the evaluation; $epochs epochs
  local name=$1; shift
  local history=$OUT/histories/$name.csv
  local settings=(--seed=0 --num_epochs="$epochs" "$@")
  if [ -f "$history" ] && up_to_date "$history" "${settings[@]}"; then
    echo "have $history"
    return
  fi
  echo "== $name"
  "$PYTHON" evaluate.py ${data_dir:+"--data_dir=$data_dir"} "${settings[@]}" \
    --history_path="$history"
}

splice() {  # case name, file of its section: its section of the table replaced (CASES order)
  local table=$OUT/table.md
  # Read, rewritten and replaced under a lock on results/ (held until the subshell ends): another
  # reproduce.sh splicing at the same time would otherwise replace the table with one that lacks
  # this section.
  (
    lock 9
    if [ ! -f $table ]; then : > $table; fi
    # A section runs from its '### <case> (...)' line to the next; the rest of the file (blank
    # lines between sections) is rewritten the way every section is written: a blank line first.
    # Lines are kept one array entry each (appending to a string copied it at every line).
    awk -v name="$1" -v order="${names[*]}" '
      function emit(key,  i, last) {
        last = size[key]
        while (last > 0 && lines[key, last] == "") last--  # Its trailing blank lines.
        printf "\n"
        for (i = 1; i <= last; i++) print lines[key, i]
        done[key] = 1
      }
      FNR == 1 { input++; key = "" }
      /^### / {  # The old section of the case is dropped: the second file holds its new one.
        key = (input == 1 && $2 == name) ? "" : $2
        if (key != "" && !(key in size)) seen[++count] = key
      }
      key != "" { lines[key, ++size[key]] = $0 }
      END {  # The cases in their order, then any other section where it was.
        n = split(order, ordered, " ")
        for (i = 1; i <= n; i++) if (ordered[i] in size) emit(ordered[i])
        for (i = 1; i <= count; i++) if (!(seen[i] in done)) emit(seen[i])
      }' $table "$2" > "$tmp/table.md"
    mv "$tmp/table.md" $table
  ) 9< "$OUT"
}

lock() {  # file descriptor: an exclusive lock on what it is open on, released when it is closed
  if command -v flock > /dev/null; then
    flock "$1"
    return
  fi
  # Without flock(1) (macOS): a lock folder naming its holder, taken over when that is gone.
  until mkdir "$OUT/.table.lock" 2> /dev/null; do
    if ! kill -0 "$(cat "$OUT/.table.lock/pid" 2> /dev/null || echo 0)" 2> /dev/null; then
      rm -rf "$OUT/.table.lock"
    fi
    sleep 0.1
  done
  echo $BASHPID > "$OUT/.table.lock/pid"
  trap 'rm -rf "$OUT/.table.lock"' EXIT
}

publish() {  # case name, steps: its curves and its section of the table, from $histories
  local name=$1 steps=$2 joined label_flag
  joined=$(IFS=,; echo "${histories[*]}")
  # An empty label: plot.py's, from the history's header (the tuned rate, the kind).
  label_flag=--labels=$(IFS=,; echo "${labels[*]}")
  # Drawn in $tmp, then moved: plot.py's line naming the temporary file would mislead.
  "$PYTHON" plot.py --histories="$joined" "$label_flag" --output="$tmp/$name.png" \
    --title="$name ($steps steps)" | sed '/^Plot written to /d'
  { echo; echo "### $name ($steps steps)"; echo
    "$PYTHON" plot.py --histories="$joined" "$label_flag" --table
  } > "$tmp/$name.md"
  mv "$tmp/$name.png" $OUT/$name.png
  splice $name "$tmp/$name.md"
  echo "Updated $OUT/$name.png and the $name section of $OUT/table.md"
}

for case in "${CASES[@]}"; do
  histories=() labels=()
  read -r name problem steps saved <<< "$case"
  if [ $# -gt 0 ] && [[ ! " $* " =~ " $name " ]]; then continue; fi
  common=(--problem=$problem --num_steps=$steps) epochs=$EPOCHS
  if [ $problem = fashion_mnist ]; then data_dir=${FASHION_DIR:-}; else data_dir=${MNIST_DIR:-}; fi
  for kind in L2L fixed learned; do
    case $kind in
      L2L) file=cw.l2l;; fixed) file=cwfixed0.01.l2l;; learned) file=cwlearned.l2l;;
    esac
    if [ -f saved_optimizers/$saved/$file ]; then
      evaluate ${name}_$kind "${common[@]}" --optimizer=$kind --path=saved_optimizers/$saved/$file \
        --state_reset_period=0
      histories+=($OUT/histories/${name}_$kind.csv) labels+=("")
    fi
  done
  for baseline in Adam RMSprop SGD NAG; do
    grid=$GRID; if [ $baseline = SGD ]; then grid=$SGD_GRID; fi
    evaluate ${name}_$baseline "${common[@]}" --optimizer=$baseline --learning_rates=$grid \
      --tune_epochs=$TUNE_EPOCHS
    histories+=($OUT/histories/${name}_$baseline.csv) labels+=("")
  done
  publish "$name" "$steps"
done

# Each case with its group's grid appended.
for case in "${HELDOUT_CASES[@]/%/ $HELDOUT_GRID}" "${LONG_CASES[@]/%/ $GRID}"; do
  read -r name problem steps shipped baselines grid <<< "$case"
  if [ $# -gt 0 ] && [[ ! " $* " =~ " $name " ]]; then continue; fi
  common=(--problem=$problem --num_steps=$steps) epochs=$EPOCHS_BEYOND
  # A case of 100 steps costs little: the paper's count of epochs, as its own cases.
  if [ "$steps" -le 100 ]; then epochs=$EPOCHS; fi
  if [[ $problem == *fashion* ]]; then data_dir=${FASHION_DIR:-}; else data_dir=${MNIST_DIR:-}; fi
  histories=() labels=()
  for saved in ${shipped//,/ }; do  # Each file names its network; the row names the file.
    if [ ! -f saved_optimizers/$saved/cw.l2l ]; then continue; fi
    evaluate ${name}_$saved "${common[@]}" --optimizer=L2L --path=saved_optimizers/$saved/cw.l2l \
      --state_reset_period=0
    histories+=($OUT/histories/${name}_$saved.csv) labels+=("$saved/cw.l2l")
  done
  for baseline in ${baselines//,/ }; do
    if [ $baseline = Adam-default ]; then
      evaluate ${name}_$baseline "${common[@]}" --optimizer=Adam --learning_rate=0.001
      labels+=("Adam lr 0.001 (Keras' default)")
    elif [[ $baseline == *-tuned ]]; then
      saved=${baseline%-tuned}
      evaluate ${name}_$baseline "${common[@]}" --optimizer=L2L \
        --path=saved_optimizers/$saved/cw.l2l --state_reset_period=0 --step_scales=$STEP_SCALES \
        --tune_epochs=$TUNE_EPOCHS_BEYOND
      labels+=("")
    else
      rates=$grid; if [ $baseline = SGD ] && [ "$grid" = "$GRID" ]; then rates=$SGD_GRID; fi
      evaluate ${name}_$baseline "${common[@]}" --optimizer=$baseline --learning_rates=$rates \
        --tune_epochs=$TUNE_EPOCHS_BEYOND
      labels+=("")
    fi
    histories+=($OUT/histories/${name}_$baseline.csv)
  done
  publish "$name" "$steps"
done
