"""The ``sweep`` command: a thin adapter from arguments to the framework's typed functions.

Exit codes: 0 success, 1 other errors (data, storage), 2 bad usage or study file,
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mlp.train import DivergedError
from sweep.errors import DataError, SpecError, SweepError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _cmd_data(args: argparse.Namespace) -> int:
    """Fetch, verify and cache MNIST, and print where the cache is."""
    from mlp import data

    if args.path:
        ds = data.load_mnist(args.path)
        print(f"{args.path}: read {len(ds.train.y)}/{len(ds.valid.y)}/{len(ds.test.y)} examples")
        return EXIT_OK
    path = data.fetch(force=args.force)
    print(path)
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    """Train one network and print a line per epoch and the final validation accuracy."""
    from mlp import MLP, EpochMetrics, TrainConfig, fit, load_mnist, parameter_count

    ds = load_mnist(args.data)
    if args.train_size:
        ds = ds.head(args.train_size)
    model = MLP(
        args.hidden_1,
        args.hidden_2,
        activation=args.activation,
        init=args.init,
        init_std=args.init_std,
        dtype=args.dtype,
        seed=args.seed,
    )
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        shuffle=args.shuffle,
        seed=args.seed,
    )
    print(
        f"784-{args.hidden_1}-{args.hidden_2}-10 ({parameter_count(args.hidden_1, args.hidden_2):,}"
        f" parameters), {args.init} init, {args.activation}, {args.dtype}, lr {args.learning_rate},"
        f" batch {args.batch_size}, {len(ds.train.y):,} training examples"
    )

    def show(m: EpochMetrics) -> None:
        print(
            f"epoch {m.epoch:3d}  train loss {m.train_loss:.5f}"
            f"  train acc {100 * m.train_accuracy:6.2f}%"
            f"  valid loss {m.valid_loss:.5f}  valid acc {100 * m.valid_accuracy:6.2f}%"
            f"  ({m.seconds:.1f} s)",
            flush=True,
        )

    history = fit(model, ds, config, on_epoch=show)
    print(f"validation accuracy: {100 * history.epochs[-1].valid_accuracy:.2f}%")
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0; got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep",
        description="Hyperparameter sweeps of a from-scratch numpy MLP on MNIST.",
        epilog="example: sweep train --epochs 10   |   sweep data",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "data",
        help="fetch, verify and cache MNIST; print the cache path",
        description=_cmd_data.__doc__,
        epilog="example: sweep data   |   sweep data --path ~/mnist.pkl.gz",
    )
    p.add_argument("--path", help="check a copy of your own (.pkl.gz, keras .npz, IDX folder)")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=_cmd_data)

    from mlp.functions import ACTIVATIONS, INITIALISERS

    p = sub.add_parser(
        "train",
        help="train one network (default: the notebook's reference run)",
        description=_cmd_train.__doc__,
        epilog="example: sweep train --init zeros --dtype float64 --epochs 2",
    )
    p.add_argument("--hidden-1", type=_positive_int, default=512)
    p.add_argument("--hidden-2", type=_positive_int, default=768)
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default="relu")
    p.add_argument("--init", choices=sorted(INITIALISERS), default="glorot")
    p.add_argument("--init-std", type=_positive_float, default=1.0, help="std of 'normal' init")
    p.add_argument("--learning-rate", "--lr", type=_positive_float, default=0.1)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--epochs", type=_positive_int, default=10)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--train-size", type=_positive_int, help="use only the first N training examples"
    )
    p.add_argument("--data", help="your own copy of MNIST instead of the cached one")
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the one place where errors become a one-line message and an exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("sweep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SpecError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (SweepError, DataError, DivergedError) as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
