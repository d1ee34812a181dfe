"""``gxnor-run MODEL INPUTS``: a packed model on a file of inputs, with numpy (and onnxruntime
when installed) and nothing else of gxnor's training stack.

INPUTS is a .npy file of raw integer inputs in [0, max_value] (the values the model was
trained on, e.g. uint8 pixels), shaped N x C x H x W (N x H x W when C is 1, or one
C x H x W sample).  The predicted class of each sample goes to stdout, one per line, or to
--out (.npy: an int64 array; anything else: text, one per line); --scores writes the class
scores instead (float64, N x classes).  A timing line goes to stderr.  Bad input: one line
on stderr, exit status 2.

From Python::

    from gxnor_cli.deploy.engine import PackedModel
    model = PackedModel.load("model.gxnor")       # validated in full; kernel "auto"
    classes = model.predict(images)               # images: uint8 N x C x H x W
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .engine import KERNELS, PackedModel
from .graph_engine import load_packed
from .packed import PackedError


def read_inputs(path: Path, model: PackedModel) -> np.ndarray:
    """The samples in ``path`` as uint8-compatible integers N x C x H x W, checked against the model."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise PackedError(f"cannot read {path} as a .npy array: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    shape = model.in_shape
    if array.ndim == len(shape):  # one sample, or N x H x W for a model of one channel
        array = array[None] if tuple(array.shape) == shape else array[:, None] if shape[0] == 1 else array
    if tuple(array.shape[1:]) != shape:
        raise PackedError(f"{path}: the model takes samples of shape {list(shape)}; the file holds {list(array.shape)}")
    if array.dtype.kind not in "iub":
        if array.dtype.kind != "f" or not np.array_equal(array, np.round(array)):
            raise PackedError(f"{path}: inputs must be integers (raw values in [0, {model.max_value}]), "
                              f"not {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > model.max_value):
        raise PackedError(f"{path}: inputs must lie in [0, {model.max_value}]; "
                          f"found {array.min():g} .. {array.max():g}")
    return array.astype(np.uint8) if model.max_value <= 255 else array.astype(np.int64)


def write(out: Path | None, values: np.ndarray) -> None:
    if out is not None and out.suffix == ".npy":
        np.save(out, values)
        return
    rows = values[:, None] if values.ndim == 1 else values
    text = "\n".join(",".join(repr(float(v)) if values.dtype.kind == "f" else str(int(v)) for v in row)
                     for row in rows) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gxnor-run", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a packed model (.gxnor, written by gxnor export)")
    parser.add_argument("inputs", type=Path, help=".npy file of raw integer inputs")
    parser.add_argument("--out", type=Path, help="write here (.npy, or text) instead of stdout")
    parser.add_argument("--scores", action="store_true", help="write the class scores, not the classes")
    parser.add_argument("--threads", type=int, default=1, help="threads (default 1)")
    parser.add_argument("--kernel", default="auto", choices=KERNELS, help="auto: onnxruntime when installed, else gemm")
    parser.add_argument("--batch-size", type=int, default=1000, help="samples per call (default 1000)")
    args = parser.parse_args(argv)
    try:
        if args.threads < 1 or args.batch_size < 1:
            raise PackedError("--threads and --batch-size must be at least 1")
        if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):
            raise PackedError(f"--out {args.out}: give a file in an existing directory")
        model = load_packed(args.model, args.kernel)
        model.measure, model.threads = False, args.threads
        images = read_inputs(args.inputs, model)
        start = time.perf_counter()
        if args.scores:
            values = np.concatenate([model.scores(images[i:i + args.batch_size])
                                     for i in range(0, len(images), args.batch_size)] or [np.empty((0, model.manifest["classes"]))])
        else:
            values = model.predict(images, args.batch_size) if len(images) else np.empty(0, dtype=np.int64)
        seconds = time.perf_counter() - start
        write(args.out, values)
    except PackedError as err:
        print(f"gxnor-run: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gxnor-run: interrupted", file=sys.stderr)
        return 130
    print(f"{len(images)} samples in {seconds:.3f} s ({model.kernel} kernel, {args.threads} thread"
          f"{'s' if args.threads > 1 else ''})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
