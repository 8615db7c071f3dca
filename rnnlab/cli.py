"""rnnlab command line: run the studies of ``experiments/``, redraw their figures, reproduce
everything.

  rnnlab list                               the studies and their grid sizes
  rnnlab run NAME [--grid quick|full] [--set key=v1,v2 ...] [--workers N | --scheduler ADDR]
  rnnlab figures [NAME ...]                 redraw figures from the tables only
  rnnlab reproduce [--grid quick|full]      every study, then every figure
  rnnlab demo                               train a small RNN on delayed recall
"""

import argparse
import sys

EPILOG = ("Output: results/ for the full grid (the committed tables and figures), "
          "results/quick/ for the quick grid, results/custom/ after --set; --out overrides.")


def _sweep_options(parser):
    parser.add_argument("--grid", default="quick", choices=["quick", "full"],
                        help="the study's grid (default: quick)")
    parser.add_argument("--out", default=None, help="output folder (see below)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="run on a Dask LocalCluster of N worker processes")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run on a running Dask scheduler (tcp://host:port)")
    parser.add_argument("--jobs", type=int, default=None, metavar="P",
                        help="local process-pool size (default: the CPU count; 1 = in this "
                             "process)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: on a terminal)")
    parser.add_argument("--experiments", default=None, metavar="DIR",
                        help="the experiments folder (default: ./experiments)")
    parser.add_argument("--backend", default=None, choices=["cpu", "cuda"],
                        help="where the models' kernels run (default: $RNNLAB_BACKEND or cpu; "
                             "workers started here inherit it, a --scheduler's workers need "
                             "RNNLAB_BACKEND in their own environment)")


def _parser():
    parser = argparse.ArgumentParser(prog="rnnlab", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list the studies")
    ls.add_argument("--experiments", default=None, metavar="DIR")

    run = sub.add_parser("run", help="run one study's sweep, then draw its figure",
                         epilog=EPILOG)
    run.add_argument("name", help="study name (see `rnnlab list`)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=V1[,V2...]", help="replace a grid parameter's values")
    run.add_argument("--no-figure", action="store_true", help="skip drawing the figure")
    _sweep_options(run)

    fig = sub.add_parser("figures", help="redraw figures from the tables (no computing)")
    fig.add_argument("names", nargs="*", help="studies (default: every study with a table)")
    fig.add_argument("--grid", default="full", choices=["quick", "full"],
                     help="whose tables (default output folder): default full")
    fig.add_argument("--out", default=None, help="the folder holding the tables")
    fig.add_argument("--experiments", default=None, metavar="DIR")

    rep = sub.add_parser("reproduce", help="every study, then every figure", epilog=EPILOG)
    _sweep_options(rep)

    demo = sub.add_parser("demo", help="train a small RNN on delayed recall; write its loss "
                                       "curve and gradient norms")
    demo.add_argument("--out", default="results/demo", help="output folder")
    demo.add_argument("--steps", type=int, default=1000, help="gradient steps")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true")
    return parser


def _check_sweep_args(parser, args):
    if args.backend is not None:
        import os

        from ._backend import ENV_VAR, BackendUnavailableError, resolve_backend

        try:
            resolve_backend(args.backend, "--backend")
        except BackendUnavailableError as exc:
            parser.error(str(exc))
        os.environ[ENV_VAR] = args.backend  # read by this process and the workers it spawns
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")


def main(argv=None):
    """Entry point of the ``rnnlab`` console script and ``python -m rnnlab``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(parser, args)
    from .harness import registry, runner, store

    try:
        if args.command == "list":
            for name in registry.study_names(args.experiments):
                study = registry.load_study(name, args.experiments)
                print(f"{name:18s} quick {len(study.grids['quick']):4d} points, full "
                      f"{len(study.grids['full']):4d} points  {study.title}")
            return 0
        if args.command == "figures":
            out = args.out or runner.default_out(args.grid, None)
            names = args.names or [n for n in registry.study_names(args.experiments)
                                   if store.table_path(out, n).exists()]
            if not names:
                parser.error(f"no study tables under {out}: run `rnnlab run NAME` or "
                             f"`rnnlab reproduce` first")
            for name in names:
                for f in runner.draw(name, out, args.experiments):
                    print(f)
            return 0
        _check_sweep_args(parser, args)
        if args.command == "run":
            plans = [runner.plan(args.name, args.grid, args.overrides, args.out,
                                 args.experiments)]
            draw = not args.no_figure
        else:
            plans = [runner.plan(n, args.grid, None, args.out, args.experiments)
                     for n in registry.study_names(args.experiments)]
            draw = True
    except (KeyError, ValueError, TypeError, FileNotFoundError, PermissionError,
            AttributeError) as exc:
        parser.error(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc))

    # every plan is valid: now the work
    failed = False
    reports = []
    for p in plans:
        report = runner.run_plan(p, args.workers, args.scheduler, args.jobs, args.progress)
        print(report.summary(), flush=True)
        reports.append(report)
    if draw:
        for report in reports:
            try:
                for f in runner.draw(report.name, report.out, args.experiments,
                                     table=report.table):
                    print(f"  figure {f}")
            except Exception as exc:  # the tables are written; say what failed
                failed = True
                print(f"rnnlab: figure of {report.name} failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
    errors = sum(r.statuses.get("error", 0) for r in reports)
    if errors:
        print(f"rnnlab: {errors} point(s) failed; their errors are in the tables' 'error' "
              f"column and a rerun recomputes them", file=sys.stderr)
    return 1 if failed or errors else 0


def _demo(parser, args):
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
