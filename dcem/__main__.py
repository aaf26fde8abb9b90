"""Command line: ``dcem demo [--out DIR] ...`` (also ``python -m dcem demo``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dcem", description="Differentiable cross-entropy method")
    sub = parser.add_subparsers(dest="command", required=True)
    from dcem.experiments import demo

    demo.add_arguments(sub.add_parser("demo", help="2-D CEM / DCEM demo with plots"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "demo":
        try:
            demo.run_from_args(args)
        except ValueError as err:  # a bad option or output folder: one line, not a traceback
            raise SystemExit(f"dcem demo: error: {err}") from None
        except KeyboardInterrupt:
            sys.stderr.write("interrupted; run the same command to start the demo again\n")
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()
