"""Command line: ``rnnlab demo`` (the experiment harness adds ``run``, ``figures``, ``reproduce``)."""

import argparse
import sys


def main(argv=None):
    """Entry point of the ``rnnlab`` console script and ``python -m rnnlab``."""
    parser = argparse.ArgumentParser(prog="rnnlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small RNN on delayed recall; write its loss "
                                       "curve and gradient norms")
    demo.add_argument("--out", default="results/demo", help="output folder")
    demo.add_argument("--steps", type=int, default=1000, help="gradient steps")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        if args.steps < 1:
            parser.error("--steps must be >= 1")
        try:
            run_demo(out_dir=args.out, steps=args.steps, seed=args.seed, verbose=not args.quiet)
        except OSError as exc:
            parser.error(f"cannot write to --out {args.out!r}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
