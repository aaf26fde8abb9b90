"""``dcem-exp regression mode=report out_dir=RUN``: the numbers and figures of the results page.

Reads a finished, analysed run folder (``results.json``, ``summary.csv``, ``config.yaml`` and
the figures written by :func:`dcem.experiments.regression.analysis.analyse`) and rewrites the
generated blocks of ``report.page`` (:mod:`dcem.experiments.common.report`), copying the figures
to ``report.img_dir`` with the prefix ``regression_``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dcem._io import read_json
from dcem.experiments.common.report import copy_figure, fmt_ci, md_table, update_page
from dcem.experiments.common.runs import RunError

log = logging.getLogger(__name__)

__all__ = ["report", "FIGURES"]

#: figures of a run folder copied next to the page (as ``regression_<name>``)
FIGURES = (
    "loss_curves.png",
    "energy_surfaces.png",
    "energy_surfaces_all_seeds.png",
    "ablation_mse.png",
    "ablation_predictions.png",
)
_NAMES = {"gd": "unrolled GD", "dcem": "DCEM"}
_ITERS = (1, 3, 5, 8, 10, 12, 15, 20, 30)


def _load(run: Path) -> tuple[DictConfig, dict[str, Any], list[dict[str, Any]]]:
    need = [run / f for f in ("config.yaml", "results.json", "summary.csv")]
    missing = [p.name for p in need if not p.is_file()]
    if missing:
        raise RunError(
            f"out_dir={run}: not an analysed regression run (missing {', '.join(missing)}); "
            "run `dcem-exp regression out_dir=...` first"
        )
    results = read_json(run / "results.json", "results file")
    if "train_mse_last" not in next(iter(results["methods"].values())):
        raise RunError(
            f"out_dir={run}: analysed by an older version; rerun `dcem-exp regression out_dir={run}`"
        )
    with open(run / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    return OmegaConf.load(run / "config.yaml"), results, rows


def _f(a: dict[str, float]) -> str:
    return fmt_ci(a["mean"], a["ci95"], 3)


def _main_block(cfg: DictConfig, results: dict, rows: list[dict], k: int) -> str:
    head = [
        "method",
        f"train MSE (mean of last {k} evals)",
        "held-out MSE (last evals)",
        "train MSE (final model only)",
        "MSE of grid argmin_y E",
        "training s / run",
    ]
    body = [
        [
            _NAMES.get(m, m),
            _f(a["train_mse_last"]),
            _f(a["test_mse_last"]),
            _f(a["train_mse"]),
            _f(a["argmin_mse"]),
            f"{a['wall_s']['mean']:.0f}",
        ]
        for m, a in results["methods"].items()
    ]
    per_seed = [
        [
            _NAMES.get(r["method"], r["method"]),
            r["seed"],
            f"{float(r['train_mse_last']):.3g}",
            f"{float(r['test_mse_last']):.3g}",
            f"{float(r['train_mse']):.3g}",
            f"{float(r['argmin_mse']):.3g}",
        ]
        for r in rows
    ]
    return (
        md_table(head, body) + "\n\nmean ± half-width of the 95% Student-t interval over "
        f"{len(results['seeds'])} seeds\n\n"
        + md_table(
            [
                "method",
                "seed",
                "train MSE (last evals)",
                "held-out (last evals)",
                "train (final)",
                "grid argmin",
            ],
            per_seed,
        )
    )


def _ablation_block(results: dict) -> str:
    n = len(results["ablation_iters"])
    its = [k for k in _ITERS if k <= n]
    rows = []
    for k in its:
        cells = []
        for a in results["methods"].values():
            ab = a["ablation_train_mse"]
            cells.append(f"{ab['mean'][k - 1]:.3g} [{ab['lo'][k - 1]:.3g}, {ab['hi'][k - 1]:.3g}]")
        rows.append([f"**{k}** (training)" if k == 10 else k, *cells])
    return md_table(["test-time iterations", *(_NAMES.get(m, m) for m in results["methods"])], rows)


def report(cfg: DictConfig) -> None:
    """Rewrite the generated blocks of ``cfg.report.page`` from the run in ``cfg.out_dir``."""
    if not cfg.out_dir:
        raise RunError("mode=report needs out_dir=... pointing at an analysed regression run folder")
    run = Path(cfg.out_dir)
    run_cfg, results, rows = _load(run)
    k = int(cfg.report.last_evals)
    if k != int(run_cfg.get("report", {}).get("last_evals", k)):
        log.warning("report.last_evals=%d differs from the run's analysis; rerun the analysis to apply it", k)
    k = int(run_cfg.get("report", {}).get("last_evals", k))
    tr = run_cfg.train
    setup = (
        f"Run folder `{run}`: methods {list(run_cfg.methods)}, seeds {list(run_cfg.seeds)}, "
        f"{int(tr.n_updates)} updates, batch {tr.batch_size}, Adam lr {float(tr.lr):g}, evaluation every "
        f"{int(tr.eval_every)} updates; the final MSE is the mean of the last {k} evaluations."
    )
    img = Path(cfg.report.img_dir)
    for f in FIGURES:
        copy_figure(run / f, img / f"regression_{f}")
    blocks = {
        "setup": setup,
        "main": _main_block(run_cfg, results, rows, k),
        "ablation": _ablation_block(results),
    }
    update_page(cfg.report.page, blocks, f"dcem-exp regression mode=report out_dir={run}",
                runs={"main": [run], "ablation": [run]})  # provenance under the numbers
    log.info("rewrote the generated blocks of %s", cfg.report.page)
