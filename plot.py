r"""Plots and tabulates evaluation histories (the CSV files that evaluate.py writes).

    python plot.py --histories=saved_histories/mnist_L2L_x.csv,saved_histories/mnist_Adam_tuned.csv \
        --output=figures/mnist.pdf
    python plot.py --histories=... --table

The plot shows, per optimizer, the mean loss at every step (log scale) and a band from the 25th
to the 75th percentile over epochs; `.pdf` or `.svg` outputs are vector graphics, other names
(with or without a suffix) a 200 dpi PNG, written to exactly that name and atomically. Steps
where the mean is not a finite positive number (an optimizee that diverged) are left out of the
curve, and a history with no such step is left out of the plot with a note. The table gives the
mean loss at step 100 and at the last step with its standard error (none for one epoch), then
each optimizer against the best hand-designed one on the same epochs: the mean of the paired
differences and its standard error (the histories of one `--seed` start from the same networks
and see the same batches, so the pairs share their luck).
"""

import io
import re
import sys

from absl import flags
import numpy as np

import cli
import configs
import util

FLAGS = flags.FLAGS
flags.DEFINE_list("histories", None, "History CSV files, one per optimizer.")
flags.DEFINE_list("labels", None, "A label per history (default, or where empty: from the "
                  "file's header).")
flags.DEFINE_string("output", None, "File to write the plot to: .pdf or .svg (vector), else PNG.")
flags.DEFINE_string("title", None, "Title of the plot (default: from the histories' settings).")
flags.DEFINE_boolean("table", False, "Print a Markdown table of the mean losses instead.")

BASELINES = configs.BASELINES
# Okabe and Ito's colour-blind-safe palette; each curve also has its own line style.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#F0E442")
STYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)))


def fields_of(header):
    """`{name: value}` of a history header (`optimizer=Adam problem=mnist ...`)."""
    return dict(re.findall(r"(\w+)=(\S+)", header))


def _number(text):
    """`0.03` for a header's `3e-2`; a value that is not a number as it is."""
    try:
        return f"{float(text):g}"
    except ValueError:
        return text


def label(header):
    """What the optimizer is, for a legend: `L2L (LSTM)`, `Adam lr 0.03`, `learned lambda`."""
    fields = fields_of(header)
    name = fields.get("optimizer", "?")
    untrained = " (untrained)" if fields.get("path") == "None" else ""
    if name in BASELINES and "learning_rate" in fields:
        return f"{name} lr {_number(fields['learning_rate'])}"
    if "step_scale" in fields:  # A learned optimizer's steps scaled: named by its file.
        path = fields.get("path", "None")
        what = "/".join(path.split("/")[-2:]) if path != "None" else f"{name} (untrained)"
        return f"{what}, step scale {_number(fields['step_scale'])}"
    if name == "L2L":
        return f"L2L (LSTM){untrained}"
    if name == "fixed":
        value = fields.get("fixed_lambda")
        return (f"fixed lambda {_number(value)}{untrained}" if value
                else f"fixed lambda{untrained}")
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


def _mean_and_error(values):
    """Mean and standard error over epochs (error None for one epoch or a non-finite mean)."""
    with np.errstate(invalid="ignore", over="ignore"):  # Diverged epochs: inf, said as such.
        mean = float(np.mean(values))
        if len(values) < 2 or not np.isfinite(mean):
            return mean, None
        return mean, float(np.std(values, ddof=1) / np.sqrt(len(values)))


def summary(losses, step):
    """Mean and standard error over epochs of the loss after `step` (1-based)."""
    return _mean_and_error(losses[:, step - 1])


def paired(losses, reference, step):
    """Mean and standard error of the paired differences `losses - reference` after `step`."""
    with np.errstate(invalid="ignore"):
        return _mean_and_error(losses[:, step - 1] - reference[:, step - 1])


def _plus_minus(mean, error, digits, sign=""):
    """`0.123 ± 0.004`; the mean alone without an error (one epoch, or diverged)."""
    text = f"{mean:{sign}.{digits}f}"
    return text if error is None else f"{text} ± {error:.{digits}f}"


def _plottable(losses):
    """The mean loss at every step, NaN where it is not a finite positive number (log scale)."""
    with np.errstate(invalid="ignore", over="ignore"):
        mean = np.mean(losses, axis=0)
    return np.where(np.isfinite(mean) & (mean > 0), mean, np.nan)


# What the output's suffix asks matplotlib for; any other name is a PNG.
_VECTOR_FORMATS = {".pdf": "pdf", ".svg": "svg"}


def plot(histories, labels, output, plot_title):
    """Writes the figure to `output` atomically; returns the notes on histories left out.

    Raises:
      util.FileFormatError: no history has a step to plot, or `output` cannot be written.
    """
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")  # Files only: no display needed.
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    figure, axes = pyplot.subplots(figsize=(6.4, 4.2))
    notes, plotted = [], 0
    for i, ((_, losses), name) in enumerate(zip(histories, labels)):
        mean = _plottable(losses)
        if np.all(np.isnan(mean)):
            diverged = int(np.sum(~np.all(np.isfinite(losses), axis=1)))
            notes.append(f"{name}: no step with a finite positive mean loss ({diverged} of "
                         f"{len(losses)} epochs diverged); left out of the plot.")
            continue
        plotted += 1
        steps = np.arange(1, losses.shape[1] + 1)
        with np.errstate(invalid="ignore"):
            low, high = np.percentile(losses, [25, 75], axis=0)
        colour, style = COLOURS[i % len(COLOURS)], STYLES[i % len(STYLES)]
        axes.plot(steps, mean, label=name, color=colour, linestyle=style)
        band = np.isfinite(low) & np.isfinite(high) & (low > 0)
        axes.fill_between(steps, np.where(band, low, np.nan), np.where(band, high, np.nan),
                          alpha=0.15, color=colour)
    if not plotted:
        pyplot.close(figure)
        raise util.FileFormatError("Nothing to plot: no history has a step with a finite "
                                   "positive mean loss (every optimizee diverged); see --table.")
    axes.set_yscale("log")
    axes.set_xlabel("optimizee step")
    axes.set_ylabel("loss (mean; band: 25th to 75th percentile)")
    axes.set_title(plot_title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    suffix = re.search(r"\.[^./]*$", output)
    image_format = _VECTOR_FORMATS.get(suffix.group().lower() if suffix else None, "png")
    image = io.BytesIO()
    figure.savefig(image, format=image_format, dpi=None if image_format != "png" else 200)
    pyplot.close(figure)
    util.atomic_write(output, image.getvalue(), what="plot", create_folder=True)
    return notes


def _paired_section(histories, labels, reference_index, rows, what):
    """Markdown: each of `rows` against the history `reference_index` on the same epochs."""
    reference_header, reference = histories[reference_index]
    pairable = [i for i in rows
                if i != reference_index and histories[i][1].shape == reference.shape
                and same_epochs(fields_of(histories[i][0]), fields_of(reference_header))]
    if not pairable:
        return []
    lines = ["", f"Against {labels[reference_index]}, {what}, on the same epochs (mean paired "
                 f"difference ± its standard error; negative: better):", "",
             "| optimizer | at step 100 | at the last step | standard errors |",
             "| --- | --- | --- | --- |"]
    for i in pairable:
        losses = histories[i][1]
        at_100 = (_plus_minus(*paired(losses, reference, 100), 4, "+")
                  if losses.shape[1] >= 100 else "n/a")
        mean, error = paired(losses, reference, losses.shape[1])
        # Two decimals: the claims measured here are "at least 3 standard errors", and 2.98 would
        # print as 3.0 with one.
        ratio = f"{mean / error:+.2f}" if error else "n/a"
        lines.append(f"| {labels[i]} | {at_100} | {_plus_minus(mean, error, 4, '+')} | "
                     f"{ratio} |")
    return lines


def table(histories, labels):
    """Markdown: the means, every optimizer against the best hand-designed one, paired, and
    the lambda optimizers against the plain LSTM (L2L), paired."""
    lines = ["| optimizer | epochs | loss at step 100 | loss at the last step |",
             "| --- | --- | --- | --- |"]
    for (_, losses), name in zip(histories, labels):
        at_100 = (_plus_minus(*summary(losses, 100), 3) if losses.shape[1] >= 100 else "n/a")
        last = f"{_plus_minus(*summary(losses, losses.shape[1]), 3)} (step {losses.shape[1]})"
        lines.append(f"| {name} | {losses.shape[0]} | {at_100} | {last} |")
    kinds = [fields_of(header).get("optimizer") for header, _ in histories]
    baselines = [i for i, kind in enumerate(kinds) if kind in BASELINES]
    if baselines:
        with np.errstate(invalid="ignore", over="ignore"):
            best = min(baselines, key=lambda i: np.nan_to_num(np.mean(histories[i][1][:, -1]),
                                                              nan=np.inf))
        lines += _paired_section(histories, labels, best, range(len(histories)),
                                 "the best hand-designed optimizer")
        # Keras' default optimizer (Adam at 0.001), when it is there and not already the best:
        # what a user who tunes nothing would otherwise run.
        default = [i for i in baselines if i != best and kinds[i] == "Adam"
                   and _number(fields_of(histories[i][0]).get("learning_rate", "")) == "0.001"]
        if default:
            lines += _paired_section(histories, labels, default[0],
                                     [i for i in range(len(histories)) if i not in baselines],
                                     "Keras' default optimizer")
    # Whether the fork's lambda term helps: each lambda optimizer against the first L2L.
    lambdas = [i for i, kind in enumerate(kinds) if kind in ("fixed", "learned")]
    if "L2L" in kinds and lambdas:
        lines += _paired_section(histories, labels, kinds.index("L2L"), lambdas,
                                 "the LSTM without lambda")
    return lines


def main(argv):
    cli.check_no_arguments(argv)
    if not FLAGS.histories:
        raise util.FlagError("--histories needs at least one history CSV file.")
    if FLAGS.labels and len(FLAGS.labels) != len(FLAGS.histories):
        raise util.FlagError(f"--labels has {len(FLAGS.labels)} labels for "
                             f"{len(FLAGS.histories)} histories.")
    histories = [cli.read_history(path) for path in FLAGS.histories]
    # An empty label (",,") is the header's: a script can name some rows and not others.
    labels = [given or label(header)
              for given, (header, _) in zip(FLAGS.labels or [""] * len(histories), histories)]
    if FLAGS.table:
        print("\n".join(table(histories, labels)))
        return
    if not FLAGS.output:
        raise util.FlagError("--output is needed for a plot (or pass --table).")
    plot_title = title([h for h, _ in histories]) if FLAGS.title is None else FLAGS.title
    for note in plot(histories, labels, FLAGS.output, plot_title):
        print(f"Note: {note}")
    print(f"Plot written to {FLAGS.output}")


if __name__ == "__main__":
    cli.main(main, __doc__, sys.argv)
