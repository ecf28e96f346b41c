"""Plots and tabulates evaluation histories (the CSV files that evaluate.py writes).

    python plot.py --histories=saved_histories/mnist_L2L_x.csv,saved_histories/mnist_Adam_tuned.csv \
        --output=figures/mnist.pdf
    python plot.py --histories=... --table

The plot shows, per optimizer, the mean loss at every step (log scale) and a band from the 25th
to the 75th percentile over epochs; `.pdf` or `.svg` outputs are vector graphics, other names a
200 dpi PNG. The table gives the mean loss at step 100 and at the last step with its standard
error, then each optimizer against the best hand-designed one on the same epochs: the mean of
the paired differences and its standard error (the histories of one `--seed` start from the same
networks and see the same batches, so the pairs share their luck).
"""

import os
import re
import sys

from absl import flags
import numpy as np

import cli
import util

FLAGS = flags.FLAGS
flags.DEFINE_list("histories", None, "History CSV files, one per optimizer.")
flags.DEFINE_list("labels", None, "A label per history (default: from each file's header).")
flags.DEFINE_string("output", None, "File to write the plot to: .pdf or .svg (vector), else PNG.")
flags.DEFINE_string("title", None, "Title of the plot (default: from the histories' settings).")
flags.DEFINE_boolean("table", False, "Print a Markdown table of the mean losses instead.")

BASELINES = ("Adam", "RMSprop", "SGD", "NAG")
# Okabe and Ito's colour-blind-safe palette; each curve also has its own line style.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#F0E442")
STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)))


def fields_of(header):
    """`{name: value}` of a history header (`optimizer=Adam problem=mnist ...`)."""
    return dict(re.findall(r"(\w+)=(\S+)", header))


def label(header):
    """What the optimizer is, for a legend: `L2L (LSTM)`, `Adam lr 0.03`, `learned lambda`."""
    fields = fields_of(header)
    name = fields.get("optimizer", "?")
    untrained = " (untrained)" if fields.get("path") == "None" else ""
    if name in BASELINES and "learning_rate" in fields:
        return f"{name} lr {float(fields['learning_rate']):g}"
    if name == "L2L":
        return f"L2L (LSTM){untrained}"
    if name == "fixed":
        value = fields.get("fixed_lambda")
        return f"fixed lambda {float(value):g}{untrained}" if value else f"fixed lambda{untrained}"
    if name == "learned":
        return f"learned lambda{untrained}"
    return name


def title(headers):
    """`mnist, 100 steps, 100 epochs`: what every history has in common."""
    common = [fields_of(h) for h in headers]
    parts = []
    for key, text in (("problem", "{}"), ("num_steps", "{} steps"), ("num_epochs", "{} epochs"),
                      ("seed", "seed {}"), ("split", "{} split")):
        values = {c.get(key) for c in common}
        if len(values) == 1 and None not in values:
            parts.append(text.format(values.pop()))
    return ", ".join(parts)


def same_epochs(fields, other):
    """Whether two histories' epochs are the same problems and batches (pairable)."""
    return all(fields.get(key, default) == other.get(key, default)
               for key, default in (("problem", None), ("seed", None), ("split", "test")))


def summary(losses, step):
    """Mean and standard error over epochs of the loss after `step` (1-based)."""
    column = losses[:, step - 1]
    return float(np.mean(column)), float(np.std(column, ddof=1) / np.sqrt(len(column)))


def paired(losses, reference, step):
    """Mean and standard error of the paired differences `losses - reference` after `step`."""
    difference = losses[:, step - 1] - reference[:, step - 1]
    return (float(np.mean(difference)),
            float(np.std(difference, ddof=1) / np.sqrt(len(difference))))


def plot(histories, labels, output, plot_title):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")  # Files only: no display needed.
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    figure, axes = pyplot.subplots(figsize=(6.4, 4.2))
    for i, ((_, losses), name) in enumerate(zip(histories, labels)):
        steps = np.arange(1, losses.shape[1] + 1)
        low, high = np.percentile(losses, [25, 75], axis=0)
        colour, style = COLOURS[i % len(COLOURS)], STYLES[i % len(STYLES)]
        axes.plot(steps, np.mean(losses, axis=0), label=name, color=colour, linestyle=style)
        axes.fill_between(steps, low, high, alpha=0.15, color=colour)
    axes.set_yscale("log")
    axes.set_xlabel("optimizee step")
    axes.set_ylabel("loss (mean; band: 25th to 75th percentile)")
    axes.set_title(plot_title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    vector = output.lower().endswith((".pdf", ".svg"))
    figure.savefig(output, dpi=None if vector else 200)
    pyplot.close(figure)


def table(histories, labels):
    """Markdown: the means, then every optimizer against the best hand-designed one, paired."""
    lines = ["| optimizer | epochs | loss at step 100 | loss at the last step |",
             "| --- | --- | --- | --- |"]
    for (_, losses), name in zip(histories, labels):
        at_100 = ("{:.3f} ± {:.3f}".format(*summary(losses, 100))
                  if losses.shape[1] >= 100 else "n/a")
        last = "{:.3f} ± {:.3f} (step {})".format(*summary(losses, losses.shape[1]),
                                                   losses.shape[1])
        lines.append(f"| {name} | {losses.shape[0]} | {at_100} | {last} |")
    baselines = [i for i, (header, _) in enumerate(histories)
                 if fields_of(header).get("optimizer") in BASELINES]
    if not baselines:
        return lines
    best = min(baselines, key=lambda i: np.mean(histories[i][1][:, -1]))
    reference_header, reference = histories[best]
    pairable = [i for i, (header, losses) in enumerate(histories)
                if i != best and losses.shape == reference.shape
                and same_epochs(fields_of(header), fields_of(reference_header))]
    if not pairable:
        return lines
    lines += ["", f"Against {labels[best]}, the best hand-designed optimizer, on the same "
                  f"epochs (mean paired difference ± its standard error; negative: better):", "",
              "| optimizer | at step 100 | at the last step | standard errors |",
              "| --- | --- | --- | --- |"]
    for i in pairable:
        losses = histories[i][1]
        at_100 = ("{:+.4f} ± {:.4f}".format(*paired(losses, reference, 100))
                  if losses.shape[1] >= 100 else "n/a")
        mean, error = paired(losses, reference, losses.shape[1])
        ratio = f"{mean / error:+.1f}" if error > 0 else "n/a"
        lines.append(f"| {labels[i]} | {at_100} | {mean:+.4f} ± {error:.4f} | {ratio} |")
    return lines


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
        print("\n".join(table(histories, labels)))
        return
    if not FLAGS.output:
        raise util.FlagError("--output is needed for a plot (or pass --table).")
    plot_title = title([h for h, _ in histories]) if FLAGS.title is None else FLAGS.title
    plot(histories, labels, FLAGS.output, plot_title)
    print(f"Plot written to {FLAGS.output}")


if __name__ == "__main__":
    cli.main(main, __doc__, sys.argv)
