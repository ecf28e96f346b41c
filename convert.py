"""Converts optimizer files of the TF1 / Sonnet 1 code (`.l2l` pickles) to this project's format.

    python convert.py --path=old/quadratic --output_dir=saved/quadratic
    python convert.py --path=old/mnist/cwfixed0.01.l2l --output_dir=saved/mnist

Each converted file keeps its name (which carries lambda for `<key>fixed<lambda>.l2l`). Every
input is read and checked before anything is written, so a bad file leaves `output_dir` as it was.
Files already in this project's format are reported and not copied.
"""

import os
import stat
import sys

from absl import flags

import cli
import util
import weights_file

FLAGS = flags.FLAGS


def _define_flags():
    # Defined only when run as a script, so that tests can import `convert` next to evaluate.py,
    # which defines a --path flag too.
    flags.DEFINE_string("path", None, "A legacy .l2l file, or a directory of them to convert.")
    flags.DEFINE_string("output_dir", None, "Directory for the converted files (created if "
                        "needed); not the input directory, and without files of the same names.")
    flags.mark_flags_as_required(["path", "output_dir"])


def _inputs(path):
    """The `.l2l` files to convert and the directory that holds them."""
    if os.path.isdir(path):
        names = sorted(f for f in os.listdir(path)
                       if f.endswith(".l2l") and os.path.isfile(os.path.join(path, f)))
        if not names:
            raise util.FlagError(f"--path {path} holds no .l2l file.")
        return [os.path.join(path, f) for f in names], path
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise util.FlagError(f"--path {path} {util.unreachable(path) or e.strerror}."
                             ) from None
    if not stat.S_ISREG(mode):
        raise util.FlagError(f"--path {path} is {util.describe_mode(mode)}; give a .l2l file or "
                             f"a folder of them.")
    return [path], os.path.dirname(path) or "."


def _describe(network):
    return " ".join(f"{k}={v!r}" for k, v in network.options.items())


def convert(path, output_dir):
    """Converts the legacy `.l2l` file `path`, or each in directory `path`, into `output_dir`.

    Returns:
      One line per input file, saying what became of it.

    Raises:
      util.UserError: no input, `output_dir` is the input directory, a destination exists, or an
        input cannot be read or converted (`networks.WeightsFileError`); nothing is written then.
    """
    # Imported here (it imports TensorFlow), after the flags: `--help` answers at once.
    import networks  # pylint: disable=import-outside-toplevel
    files, input_dir = _inputs(path)
    if os.path.realpath(output_dir) == os.path.realpath(input_dir):
        raise util.FlagError(f"--output_dir {output_dir} is the input directory; choose another, "
                             f"so that the legacy files stay as they are.")
    converted, lines = [], []
    for file in files:
        name = os.path.basename(file)
        # Read as `load` reads it: a regular file only (a FIFO would block), size capped.
        magic = util.read_file(file, weights_file.MAX_FILE_BYTES, what="optimizer file",
                               error=util.WeightsFileError)[:len(weights_file.ZIP_MAGIC)]
        if magic == weights_file.ZIP_MAGIC:
            weights_file.load(file)  # Still say if it is damaged.
            lines.append(f"{name}: already in this project's format; not copied.")
            continue
        saved = weights_file.load(file)  # Legacy or not an optimizer file: clear errors either way.
        network = networks.factory(saved.net, net_path=file)
        destination = os.path.join(output_dir, name)
        if os.path.lexists(destination):
            raise util.FlagError(f"{destination} exists; refusing to overwrite it (remove it or "
                             f"choose another --output_dir).")
        converted.append((network, destination))
        lines.append(f"{name} -> {destination}: {saved.net} {_describe(network)}")
    if converted:
        os.makedirs(output_dir, exist_ok=True)
    for network, destination in converted:
        networks.save(network, destination)
    return lines


def main(argv):
    cli.check_no_arguments(argv)
    for line in convert(FLAGS.path, FLAGS.output_dir):
        print(line)


if __name__ == "__main__":
    _define_flags()
    cli.main(main, __doc__, sys.argv)
