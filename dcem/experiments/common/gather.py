"""``dcem-exp gather SWEEP_DIR``: the paper's curves and tables from the run folders of a sweep.

A sweep (``dcem-exp NAME -m ...``, :mod:`.sweep`) leaves one run folder per job under its sweep
root, each with its ``config.yaml``. The runs are grouped by the keys that vary across the jobs
(seeds excepted: they are the replicates), and for every group the final metrics and the learning
curve are averaged over the seeds with a two-sided 95% Student-t interval
(:func:`.runs.mean_ci95`). Written into ``SWEEP_DIR/gather/`` (or ``out=DIR``):

- ``results.csv`` and ``results.md``: one row per group, ``mean`` and ``ci95`` of each metric;
- ``curves.png``: the mean learning curve of every group with its 95% band.

Experiments: ``regression`` (per method: held-out MSE over updates, final train/held-out MSE;
the paper's fig. 2 comparison of GD and DCEM) and ``cartpole`` (validation cost over updates,
latent/expert cost and improvement factor; the App. C ablation over tau and the latent size).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcem._io import read_json
from dcem.experiments.common.report import md_table
from dcem.experiments.common.rundir import RunError, _flat
from dcem.experiments.common.runs import CsvLog, atomic_write_text, mean_ci95, require_scipy

__all__ = ["gather", "main"]

#: keys never used to group runs: replicates, run-time knobs, paths
_IGNORED = ("seed", "seeds", "out_dir", "resume", "progress", "num_threads", "plots", "analyse", "mode",
            "device")  # fmt: skip


@dataclass
class Run:
    """One replicate: its group labels, final metrics and learning curve ``(x, y)``."""

    labels: dict[str, Any]
    metrics: dict[str, float]
    curve: tuple[list[float], list[float]]


def _regression(folder: Path, cfg: dict) -> list[Run]:
    runs = []
    for m in cfg["methods"]:
        for s in cfg["seeds"]:
            rows = CsvLog(folder / m / f"seed{s}" / "log.csv", []).rows()
            if not rows:
                continue
            last = rows[-1]
            runs.append(Run({"method": m}, {"train_mse": last["train_mse"], "test_mse": last["test_mse"]},
                            ([r["step"] for r in rows], [r["test_mse"] for r in rows])))  # fmt: skip
    return runs


def _cartpole(folder: Path, cfg: dict) -> list[Run]:
    path = folder / "summary.json"
    if not path.exists():
        return []
    s = read_json(path, "summary file")
    rows = [r for r in CsvLog(folder / "log.csv", []).rows() if r["mode"] == "val"]
    keys = ("latent_cost", "expert_cost", "improvement_factor", "latent_test_cost", "improvement_factor_test")
    return [Run({}, {k: float(s[k]) for k in keys}, ([r["iter"] for r in rows], [r["cost"] for r in rows]))]


#: experiment -> (reader, curve's y label)
READERS = {"regression": (_regression, "held-out MSE"), "cartpole": (_cartpole, "validation cost")}


def _folders(sweep: Path) -> list[tuple[Path, dict]]:
    from omegaconf import OmegaConf

    if not sweep.is_dir():
        raise RunError(f"sweep_dir={sweep}: not a directory")
    found = []
    for p in sorted(sweep.rglob("config.yaml")):
        if "gather" in p.relative_to(sweep).parts or ".old-" in str(p.parent):
            continue
        found.append((p.parent, OmegaConf.to_container(OmegaConf.load(p), resolve=True)))
    if not found:
        raise RunError(f"sweep_dir={sweep}: no run folders (no */config.yaml); point it at the sweep "
                       "root of dcem-exp NAME -m (hydra.sweep.dir, multirun/NAME/<time>)")  # fmt: skip
    return found


def _experiment(sweep: Path, cfgs: Sequence[dict]) -> str:
    names = {(c.get("launch") or {}).get("experiment") or ("regression" if "methods" in c else
             "cartpole" if "expert" in c else "?") for c in cfgs}  # fmt: skip
    if len(names) != 1 or next(iter(names)) not in READERS:
        raise RunError(f"sweep_dir={sweep}: runs of {sorted(names)}; gather reads one experiment of "
                       f"{', '.join(READERS)} per sweep")  # fmt: skip
    return names.pop()


def _varying(cfgs: Sequence[dict]) -> list[str]:
    flats = [{k: v for k, v in _flat(c).items() if not k.startswith("launch.")} for c in cfgs]
    keys = sorted(set().union(*flats))
    return [k for k in keys if k.split(".")[-1] not in _IGNORED and k not in _IGNORED
            and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]  # fmt: skip


def _groups(folders: list[tuple[Path, dict]], reader: Any) -> dict[str, list[Run]]:
    varying = _varying([c for _, c in folders])
    groups: dict[str, list[Run]] = {}
    for folder, cfg in folders:
        flat = _flat(cfg)
        for run in reader(folder, cfg):
            labels = {**{k: flat.get(k) for k in varying}, **run.labels}
            name = ", ".join(f"{k}={v}" for k, v in labels.items()) or "all runs"
            groups.setdefault(name, []).append(run)
    return groups


def _table(groups: dict[str, list[Run]]) -> list[dict[str, Any]]:
    rows = []
    for name, runs in groups.items():
        row: dict[str, Any] = {"group": name, "n_seeds": len(runs)}
        for k in runs[0].metrics:
            row[f"{k}_mean"], row[f"{k}_ci95"] = mean_ci95([r.metrics[k] for r in runs])
        rows.append(row)
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    metrics = [k[: -len("_mean")] for k in rows[0] if k.endswith("_mean")]
    body = [[r["group"], r["n_seeds"], *(f"{r[m + '_mean']:.4g} ± {r[m + '_ci95']:.2g}" for m in metrics)]
            for r in rows]  # fmt: skip
    note = "± is the half-width of the two-sided 95% Student-t interval over seeds."
    return md_table(["group", "seeds", *metrics], body) + f"\n\n{note}\n"


def _plot(groups: dict[str, list[Run]], ylabel: str, path: Path) -> None:
    import numpy as np

    from dcem.experiments.common import plots

    with plots.style():
        fig = plots.figure(figsize=(6.4, 4.2))
        ax = fig.add_subplot(1, 1, 1)
        for name, runs in groups.items():
            n = min(len(r.curve[0]) for r in runs)
            x = np.asarray(runs[0].curve[0][:n], dtype=float)
            stats = [mean_ci95([r.curve[1][i] for r in runs]) for i in range(n)]
            mean, ci = (np.array(v, dtype=float) for v in zip(*stats))
            (line,) = ax.plot(x, mean, label=f"{name} (n={len(runs)})")
            ax.fill_between(x, mean - np.nan_to_num(ci), mean + np.nan_to_num(ci), color=line.get_color(),
                            alpha=0.2, linewidth=0)  # fmt: skip
        ax.set_xlabel("update")
        ax.set_ylabel(ylabel)
        ax.set_title("mean over seeds, 95% Student-t band")
        ax.legend(fontsize=7)
        plots.save(fig, path)


def gather(sweep_dir: str | Path, out: str | Path | None = None) -> list[dict[str, Any]]:
    """Read the run folders under ``sweep_dir`` and write the table and curves; returns the rows.

    Raises:
        RunError: ``sweep_dir`` is not a sweep of one supported experiment with finished runs.
    """
    require_scipy("dcem-exp gather")
    sweep = Path(sweep_dir)
    folders = _folders(sweep)
    name = _experiment(sweep, [c for _, c in folders])
    reader, ylabel = READERS[name]
    groups = _groups(folders, reader)
    if not groups:
        raise RunError(f"sweep_dir={sweep}: {len(folders)} {name} run folder(s) but no finished run in them")
    rows = _table(groups)
    dest = Path(out) if out is not None else sweep / "gather"
    CsvLog(dest / "results.csv", list(rows[0])).rewrite(rows)
    atomic_write_text(dest / "results.md", _markdown(rows))
    _plot(groups, ylabel, dest / "curves.png")
    return rows


def main(argv: list[str]) -> None:
    """``dcem-exp gather SWEEP_DIR [out=DIR]``."""
    import sys

    args = [a for a in argv if not a.startswith("out=")]
    outs = [a.split("=", 1)[1] for a in argv if a.startswith("out=")]
    if len(args) != 1 or args[0] in ("-h", "--help"):
        if args and args[0] in ("-h", "--help"):
            sys.stdout.write((__doc__ or "") + "\n")
            return
        raise RunError("usage: dcem-exp gather SWEEP_DIR [out=DIR] (one sweep folder)")
    rows = gather(args[0], outs[-1] if outs else None)
    dest = Path(outs[-1]) if outs else Path(args[0]) / "gather"
    sys.stdout.write(_markdown(rows) + f"\nwritten: {dest}/results.csv, results.md, curves.png\n")
