"""Plots and tabulates evaluation histories (the CSV files that evaluate.py writes).

    python plot.py --histories=saved_histories/mnist_L2L.csv,saved_histories/mnist_Adam.csv \
        --output=figures/mnist.png --title="MNIST, MLP 20 sigmoid units"
    python plot.py --histories=... --table

The plot shows, per optimizer, the mean loss at every step (log scale) and a band from the 25th
to the 75th percentile over epochs; the table gives the mean loss at step 100 and at the last
step, with its standard error over epochs.
"""

import os
import re

from absl import app
from absl import flags
import numpy as np

import cli
import util

FLAGS = flags.FLAGS
flags.DEFINE_list("histories", None, "History CSV files, one per optimizer.")
flags.DEFINE_list("labels", None, "A label per history (default: from each file's header).")
flags.DEFINE_string("output", None, "PNG file to write the plot to.")
flags.DEFINE_string("title", "", "Title of the plot.")
flags.DEFINE_boolean("table", False, "Print a Markdown table of the mean losses instead.")


def label(header):
    """`Adam (lr 0.03)`, `fixed (lambda 0.01)` or the optimizer name, from a history header."""
    fields = dict(re.findall(r"(\w+)=(\S+)", header))
    name = fields.get("optimizer", "?")
    if "learning_rate" in fields and name not in ("L2L", "fixed", "learned"):
        return f"{name} (lr {float(fields['learning_rate']):g})"
    if "fixed_lambda" in fields:
        return f"{name} (lambda {float(fields['fixed_lambda']):g})"
    return name


def summary(losses, step):
    """Mean and standard error over epochs of the loss after `step` (1-based)."""
    column = losses[:, step - 1]
    return float(np.mean(column)), float(np.std(column, ddof=1) / np.sqrt(len(column)))


def plot(histories, labels, output, title):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")  # Files only: no display needed.
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    figure, axes = pyplot.subplots(figsize=(6.4, 4.2))
    for (_, losses), name in zip(histories, labels):
        steps = np.arange(1, losses.shape[1] + 1)
        low, high = np.percentile(losses, [25, 75], axis=0)
        axes.plot(steps, np.mean(losses, axis=0), label=name)
        axes.fill_between(steps, low, high, alpha=0.2)
    axes.set_yscale("log")
    axes.set_xlabel("optimizee step")
    axes.set_ylabel("loss (mean; band: 25th to 75th percentile)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    figure.savefig(output, dpi=110)
    pyplot.close(figure)


def main(argv):
    cli.check_no_arguments(argv)
    if not FLAGS.histories:
        raise util.FlagError("--histories needs at least one history CSV file.")
    if FLAGS.labels and len(FLAGS.labels) != len(FLAGS.histories):
        raise util.FlagError(f"--labels has {len(FLAGS.labels)} labels for "
                         f"{len(FLAGS.histories)} histories.")
    histories = [cli.read_history(path) for path in FLAGS.histories]
    labels = FLAGS.labels or [label(header) for header, _ in histories]
    if FLAGS.table:
        print("| optimizer | epochs | loss at step 100 | loss at the last step |")
        print("| --- | --- | --- | --- |")
        for (_, losses), name in zip(histories, labels):
            at_100 = ("{:.3f} ± {:.3f}".format(*summary(losses, 100))
                      if losses.shape[1] >= 100 else "n/a")
            last = "{:.3f} ± {:.3f} (step {})".format(*summary(losses, losses.shape[1]),
                                                      losses.shape[1])
            print(f"| {name} | {losses.shape[0]} | {at_100} | {last} |")
        return
    if not FLAGS.output:
        raise util.FlagError("--output is needed for a plot (or pass --table).")
    plot(histories, labels, FLAGS.output, FLAGS.title)
    print(f"Plot written to {FLAGS.output}")


if __name__ == "__main__":
    app.run(cli.run(main))
