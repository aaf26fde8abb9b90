"""``dcem-exp NAME [overrides...]``: dispatch to the experiment ``dcem.experiments.NAME``."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import dcem.experiments as _pkg

#: subpackages that are not ``dcem-exp`` experiments
NOT_EXPERIMENTS = ("common", "demo")


def available() -> list[str]:
    """Names of the experiments shipped in :mod:`dcem.experiments`."""
    return sorted(m.name for m in pkgutil.iter_modules(_pkg.__path__)
                  if m.ispkg and m.name not in NOT_EXPERIMENTS and not m.name.startswith("_"))  # fmt: skip


#: the one line printed when the experiments' dependencies are missing
MISSING_EXTRA = ("dcem-exp: error: the experiments need the '{name}' package, which is not installed; "
                 "install the experiments extra: pip install -e '.[experiments]'")


def main(argv: list[str] | None = None) -> None:
    """``dcem-exp``: a missing dependency, a bad configuration and Ctrl-C each end in one line (exit
    status 1, 1 and 130), never a traceback."""
    try:
        _main(argv)
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] not in EXTRA_MODULES:
            raise
        raise SystemExit(MISSING_EXTRA.format(name=err.name.split(".")[0])) from None
    except KeyboardInterrupt:
        from dcem.experiments.common.runs import last_progress

        done = last_progress()
        where = f"at {done[0]} {done[1]}" if done else "before the first update"
        sys.stderr.write(f"interrupted {where}; run the same command to resume\n")
        raise SystemExit(130) from None


#: top-level modules of the ``experiments`` extra (see pyproject.toml)
EXTRA_MODULES = ("omegaconf", "hydra", "matplotlib", "tqdm", "scipy", "PIL", "yaml")


def _main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(
            "usage: dcem-exp NAME [key=value ...]   (dcem-exp NAME --help lists the keys)\n"
            "       dcem-exp NAME -m key=a,b ...    (a Hydra multirun; see README, Scaling out)\n"
            "       dcem-exp gather SWEEP_DIR       (plots and tables of a multirun)\n\n"
            "experiments: " + ", ".join(names) + "\n"
        )
        return
    name = argv[0]
    if name == "gather":
        from dcem.experiments.common.gather import main as gather

        try:
            return gather(argv[1:])
        except ValueError as err:
            raise SystemExit(f"dcem-exp gather: error: {err}") from None
    if name not in names:
        raise SystemExit(f"dcem-exp: unknown experiment {name!r}; choose one of: {', '.join(names)}")
    from dcem.experiments.common import distributed, sweep
    from dcem.experiments.common.config import refuse_duplicates

    try:
        refuse_duplicates(argv[1:])
    except ValueError as err:
        raise SystemExit(f"dcem-exp {name}: error: {err}") from None
    if any(a in sweep.MULTIRUN_FLAGS for a in argv[1:]):
        try:
            return sweep.multirun(name, argv[1:])
        except ValueError as err:
            raise SystemExit(f"dcem-exp {name} -m: error: {err}") from None
    module = importlib.import_module(f"dcem.experiments.{name}")

    try:
        distributed.init()  # under torchrun: join the process group (a no-op for one process)
        module.main(argv[1:])
    except ValueError as err:  # bad configuration, run folder or checkpoint: a message, not a traceback
        raise SystemExit(f"dcem-exp {name}: error: {err}") from None
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
