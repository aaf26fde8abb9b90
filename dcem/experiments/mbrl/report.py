"""``dcem-exp mbrl phase=report``: the generated blocks of ``docs/results/mbrl.md`` from run folders.

Reads every paired ``eval.json`` (:mod:`.paired`) under ``report.root`` (recursively), groups the
runs by their folder's parent relative to the root (``<task>/seed<s>`` -> ``<task>``;
``ablation/<variant>/<task>/seed<s>`` -> ``ablation/<variant>/<task>``) and writes, between the
page's ``report:`` markers (:mod:`..common.report`):

- ``mbrl-paired``: per task and controller the mean return with a 95% Student-t interval over
  all seeds x test episodes, the per-seed means and the trajectories per planning step;
- ``mbrl-paired-diffs``: paired comparisons per task with the training seed as the unit
  (:mod:`.stats`): the ratio of means per seed (t-interval over seeds), the pooled ratio with a
  two-stage bootstrap (seeds, then episodes within them) and the difference of means per seed;
  the interval over pooled episodes as a secondary, labelled column;
- ``mbrl-claims``: per task, the paper's claims read off the seed-level intervals (latent DCEM
  reaching 0.9 of full CEM; PPO improving latent DCEM) and the same-budget control; "no verdict"
  below 3 seeds x 20 episodes;
- ``mbrl-across-k``: a controller re-planning every ``k > 1`` steps against another re-planning
  every step, on the same test episodes (:mod:`.acrossk`);
- ``mbrl-best-k``: each run's validation-best ``k`` per controller; the group "each at its
  validation-best k" joins every other block once its evaluations exist (:mod:`.acrossk`);
- ``mbrl-diagnostics``: is a controller exploiting the model? the predicted vs the received
  ``H``-step return of its executed plans and its fraction of saturated actions (mean over seeds);
- ``mbrl-model-error``: the planning model's open-loop prediction error against distance on the
  held-out test episodes of each planning controller (when ``eval.json`` has it);
- ``mbrl-decoder-curve``: the latent controller's validation return against decoder updates
  (``decoder_curve.csv`` of each run, figure ``mbrl_decoder_curve.png``);
- ``mbrl-runs``: the run folders (seed, snapshots' environment steps, episodes, the fraction of
  PPO minibatches skipped as non-finite) and the unfinished ones ("running / unfinished");
- ``mbrl-bench``: the planning-step timings of ``benchmarks/bench_mbrl.py --out
  ROOT/bench_mbrl.json`` when that file exists (CPU; any GPU figure is an extrapolation);

and the figure ``mbrl_paired.png`` (copied next to the page).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from dcem.experiments.common.report import copy_figure, fmt_ci, md_table, update_page
from dcem.experiments.common.runs import RunError, mean_ci95
from dcem.experiments.mbrl.acrossk import BEST_SUFFIX, across_k, across_k_block, best_k_block, best_k_groups
from dcem.experiments.mbrl.paired import CONTROLLERS
from dcem.experiments.mbrl.runinfo import (
    curve_block,
    curve_figure,
    curves,
    group_of,
    model_error_block,
    ppo_skipped,
    probe_block,
    probes,
    replan_block,
    unfinished,
)
from dcem.experiments.mbrl.stats import compare

__all__ = ["COMPARISONS", "load_runs", "report", "summarize"]

#: (numerator, denominator) of the paired comparisons, in the table's order
COMPARISONS = [
    ("latent_dcem", "full_cem"),
    ("full_cem_budget", "full_cem"),
    ("latent_dcem", "full_cem_budget"),
    ("latent_dcem_ppo", "latent_dcem"),
    ("latent_dcem_ppo", "full_cem"),
    ("full_cem", "full_cem_phase1"),
    ("full_cem_ppo", "full_cem"),
    ("full_cem", "random"),
]
N_BOOT = 2000
EVAL_FILE = re.compile(r"^eval(_replan\d+)?\.json$")


def _need(obj: dict, key: str, path: Path, where: str = "") -> object:
    if not isinstance(obj, dict) or key not in obj:
        raise RunError(f"{path}: key {where + key!r} missing (not a paired eval.json: rerun phase=eval)")
    return obj[key]


def _check_run(res: dict, path: Path) -> dict:
    if _need(res, "format", path) != "paired-v1":
        raise RunError(f"{path}: key 'format' is {res['format']!r}, expected 'paired-v1' (rerun phase=eval)")
    seeds = _need(res, "episode_seeds", path)
    ctrls = _need(res, "controllers", path)
    for k in ("env", "seed", "snapshots"):
        _need(res, k, path)
    if not isinstance(ctrls, dict) or not ctrls:
        raise RunError(f"{path}: key 'controllers' is empty")
    for name, r in ctrls.items():
        if name not in CONTROLLERS:
            raise RunError(f"{path}: key 'controllers.{name}' is not a controller ({sorted(CONTROLLERS)})")
        rets = _need(r, "returns", path, f"controllers.{name}.")
        _need(r, "snapshot", path, f"controllers.{name}.")
        if (
            not isinstance(rets, list)
            or len(rets) != len(seeds)
            or not all(isinstance(x, (int, float)) for x in rets)
        ):
            raise RunError(f"{path}: key 'controllers.{name}.returns' must be {len(seeds)} numbers "
                           "(one per episode of 'episode_seeds')")  # fmt: skip
    return res


def load_runs(root: str | Path) -> dict[str, list[dict]]:
    """``{group: [eval.json dicts sorted by seed]}`` of the paired evaluations under ``root``; the
    evaluations re-planning every ``k > 1`` steps (``eval_replan<k>.json``) form groups of their own."""
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"report.root={str(root)!r} is not a folder (run the experiment there first)")
    runs: dict[str, list[dict]] = {}
    for path in sorted(p for p in root.rglob("eval*.json") if EVAL_FILE.match(p.name)):
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise RunError(f"{path}: unreadable ({type(err).__name__}); rerun phase=eval there") from None
        res = _check_run(res, path)
        res["_dir"] = str(path.parent)
        k = int(res.get("replan_every", 1))
        group = group_of(root, path.parent, str(res["env"])) + (f" (re-plan every {k})" if k > 1 else "")
        runs.setdefault(group, []).append(res)
    if not runs:
        raise RunError(f"report.root={str(root)!r}: no eval.json under it (run phase=eval first)")
    for env, rs in runs.items():
        seeds = [r["seed"] for r in rs]
        if len(set(seeds)) != len(seeds):
            raise RunError(f"report.root: task {env} has two runs with seed {seeds} "
                           f"({[r['_dir'] for r in rs]}); keep one per seed")  # fmt: skip
        rs.sort(key=lambda r: r["seed"])
    return runs


def _matrix(rs: list[dict], name: str) -> list[np.ndarray] | None:
    """Per-seed return arrays of ``name`` (``None`` unless every run evaluated it)."""
    if not all(name in r["controllers"] for r in rs):
        return None
    return [np.asarray(r["controllers"][name]["returns"], float) for r in rs]


def summarize(rs: list[dict]) -> dict:
    """Per-controller pooled statistics and the paired comparisons of one task's runs."""
    ctrl = {}
    for name in CONTROLLERS:
        m = _matrix(rs, name)
        if m is not None:
            ctrl[name] = {"pooled": mean_ci95(np.concatenate(m)), "per_seed": [float(a.mean()) for a in m],
                          "n": int(sum(a.size for a in m)),
                          "traj": rs[0]["controllers"][name].get("trajectories_per_step", 0),
                          "diag": {k: [float(r["controllers"][name].get(k, math.nan)) for r in rs]
                                   for k in ("pred_return", "real_return", "saturated")}}  # fmt: skip
    comps = []
    gen = np.random.default_rng(0)
    for a, b in COMPARISONS:
        num, den = _matrix(rs, a), _matrix(rs, b)
        if num is None or den is None:
            continue
        comps.append({"num": a, "den": b, **compare(num, den, gen, N_BOOT)})
    return {"controllers": ctrl, "comparisons": comps, "seeds": [r["seed"] for r in rs]}


CTRL_HEAD = ["task", "controller", "snapshot", "trajectories / step", "seeds × episodes",
             "return (95% CI, pooled episodes)", "per-seed means"]  # fmt: skip
COMP_HEAD = ["task", "comparison", "seeds × episodes", "ratio of means per seed (95% t over seeds)",
             "pooled ratio [bootstrap 95%: seeds, then episodes]", "difference per seed (95% t over seeds)",
             "secondary: difference per episode (95% CI, pooled episodes)"]  # fmt: skip
RUN_HEAD = ["task", "seed", "run folder", "env steps at each snapshot", "test episodes",
            "PPO minibatches skipped"]  # fmt: skip
DIAG_HEAD = ["task", "controller", "predicted H-step return of its plans", "received H-step return",
             "predicted / received", "saturated actions"]  # fmt: skip


def _size(rs: list[dict]) -> str:
    return f"{len(rs)} × {min(len(r['episode_seeds']) for r in rs)}"


def _tables(runs: dict[str, list[dict]], sums: dict[str, dict]) -> dict[str, str]:
    rows, crow, rrow, drow = [], [], [], []
    for env, s in sums.items():
        size = _size(runs[env])
        for name, c in s["controllers"].items():
            snap = runs[env][0]["controllers"][name]["snapshot"]
            per_seed = ", ".join(f"{v:.4g}" for v in c["per_seed"])
            rows.append([env, name, snap, c["traj"] or "–", size, fmt_ci(*c["pooled"]), per_seed])
            pred, real, sat = (float(np.mean(c["diag"][k]))
                               for k in ("pred_return", "real_return", "saturated"))  # fmt: skip
            if not math.isnan(real):
                ratio = f"{pred / real:.3g}" if real > 0 and not math.isnan(pred) else "–"
                drow.append([env, name, "–" if math.isnan(pred) else f"{pred:.3g}", f"{real:.3g}", ratio,
                             f"{100 * sat:.1f}%"])  # fmt: skip
        for c in s["comparisons"]:
            lo, hi = c["ratio_boot_seeds"]
            boot = f"{c['ratio_pooled']:.3f} [{lo:.3f}, {hi:.3f}]"
            crow.append([env, f"{c['num']} / {c['den']}", size, fmt_ci(*c["ratio_seeds"]), boot,
                         fmt_ci(*c["diff_seeds"]), fmt_ci(*c["diff_pooled"])])  # fmt: skip
        for r in [] if env.endswith(BEST_SUFFIX) else runs[env]:  # its folders are listed under their task
            steps = ", ".join(f"{k} {v['progress']['env_steps']}" for k, v in r["snapshots"].items())
            skip = ppo_skipped(r["_dir"])
            rrow.append([env, r["seed"], r["_dir"], steps, len(r["episode_seeds"]),
                         "–" if math.isnan(skip) else f"{100 * skip:.1f}%"])  # fmt: skip
    return {"mbrl-paired": md_table(CTRL_HEAD, rows), "mbrl-paired-diffs": md_table(COMP_HEAD, crow),
            "mbrl-runs": md_table(RUN_HEAD, rrow), "mbrl-diagnostics": md_table(DIAG_HEAD, drow)}  # fmt: skip


def _no_verdict(c: dict) -> str | None:
    if c["verdict"]:
        return None
    return f"no verdict ({c['seeds']} seed(s); needs ≥ 3 seeds × ≥ 20 episodes)"


def _verdict_ratio(c: dict | None, level: float) -> str:
    if c is None:
        return "not evaluated"
    lo, hi = c["ratio_boot_seeds"]
    where = "above" if lo >= level else ("below" if hi < level else "not separable from")
    cell = f"{c['ratio_pooled']:.3f} [{lo:.3f}, {hi:.3f}]"
    return f"{cell}: {_no_verdict(c)}" if _no_verdict(c) else f"{cell}: {where} {level:g}"


def _verdict_diff(c: dict | None) -> str:
    if c is None:
        return "not evaluated"
    m, h = c["diff_seeds"]
    if _no_verdict(c):
        return f"{m:+.3g}: {_no_verdict(c)}"
    word = "higher" if m - h > 0 else ("lower" if m + h < 0 else "no significant difference")
    return f"{m:+.3g} ± {h:.2g}: {word}"


def _claims(sums: dict[str, dict]) -> str:
    """One row per task: the paper's two claims and the same-budget control, read off the seed-level
    intervals (ratio: two-stage bootstrap; differences: t over seeds)."""
    rows = []
    for env, s in sums.items():
        comp = {(c["num"], c["den"]): c for c in s["comparisons"]}
        rows.append([env, _verdict_ratio(comp.get(("latent_dcem", "full_cem")), 0.9),
                     _verdict_diff(comp.get(("latent_dcem_ppo", "latent_dcem"))),
                     _verdict_diff(comp.get(("latent_dcem", "full_cem_budget"))),
                     _verdict_diff(comp.get(("full_cem_budget", "full_cem"))),
                     _verdict_ratio(comp.get(("full_cem", "random")), 5.0)])  # fmt: skip
    head = ["task", "latent DCEM / full CEM ≥ 0.9? (pooled ratio [bootstrap over seeds])",
            "PPO − no PPO (difference per seed, t over seeds)", "latent DCEM − same-budget full CEM",
            "same-budget full CEM − full CEM",
            "full CEM / random ≥ 5? (model worth planning in)"]  # fmt: skip
    return md_table(head, rows)


def _bench_block(path: Path) -> str | None:
    if not path.exists():
        return None
    b = json.loads(path.read_text())
    rows = [
        [r["name"], f"{r['median_s']:.4g}", f"{r['ratio']:.3f}", f"{r['evals_per_s']:.3g}"] for r in b["rows"]
    ]
    head = (f"device {b['device']}, {b['threads']} thread(s), obs {b['obs_dim']}, act {b['act_dim']}, "
            f"H {b['horizon']}, {b['repeats']} repeats, load average {b.get('load', 'n/a')}")  # fmt: skip
    return head + "\n\n" + md_table(["step", "median s", "ratio", "dyn evals/s"], rows) + _extrapolate(b)


def _extrapolate(b: dict) -> str:
    """App. D's cheetah-run budget priced with the measured steps (an extrapolation, labelled so)."""
    t = {r["name"].split(" (")[0]: r["median_s"] for r in b["rows"]}
    need = ("full CEM", "latent DCEM", "phase-2 decoder update", "model update")
    if not all(k in t for k in need):
        return ""
    steps = 250  # cheetah-run: 1000 env steps, action repeat 4
    p1 = 1995 * (steps * t["full CEM"] + 100 * t["model update"])
    p2 = 100 * (steps * t["latent DCEM"] + 100 * (t["phase-2 decoder update"] + t["model update"]))
    return (f"\n\n**Extrapolation, not a measurement** (these {b['device']} step times × the step counts "
            f"of `scale=paper` on cheetah-run, nothing else counted): phase 1 (1995 full-CEM episodes × "
            f"{steps} planning steps + 100 model updates each) ≈ {p1 / 3600:.0f} h, phase 2 (100 episodes × "
            f"{steps} latent-DCEM steps + 100 decoder and 100 model updates each) ≈ {p2 / 3600:.0f} h on "
            f"this device. The GPU cost is unmeasured (no GPU was lent; `benchmarks/bench_gpu.py`, "
            f"`bench_mbrl.py --device cuda` measure it).")  # fmt: skip


def _figure(runs: dict[str, list[dict]], sums: dict[str, dict], path: Path) -> Path:
    from dcem.experiments.common import plots

    with plots.style():
        fig = plots.figure(figsize=(3.2 * len(sums) + 1, 3.6), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(sums)))
        for ax, (env, s) in zip(axes, sums.items()):
            names = list(s["controllers"])
            m = [s["controllers"][n]["pooled"][0] for n in names]
            e = [0 if math.isnan(x := s["controllers"][n]["pooled"][1]) else x for n in names]
            ax.bar(range(len(names)), m, yerr=e, capsize=3, color=[f"C{k}" for k in range(len(names))])
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
            n_ep = len(runs[env][0]["episode_seeds"])
            title = env.replace("/", "/\n").replace(" (", "\n(")  # long group names: one part per line
            ax.set_title(f"{title}\n{len(s['seeds'])} seed(s) × {n_ep} ep.", fontsize=8)
        axes[0].set_ylabel("test return (paired episodes)")
        return plots.save(fig, path, dpi=100)


def _copy(fig: Path, dst: Path) -> None:
    if Path(fig).resolve() != Path(dst).resolve():  # the page may sit in report.root itself
        copy_figure(fig, dst)


def report(cfg: dict) -> Path:
    """Rewrite the generated blocks of ``report.page`` from ``report.root``; returns the page.

    Run folders without a paired ``eval.json`` yet are listed as "running / unfinished" (and their
    decoder curves plotted); when no run has finished, only those blocks are written.
    """
    root, page = Path(cfg["report"]["root"]), Path(cfg["report"]["page"])
    pending = unfinished(root) if root.is_dir() else []
    try:
        runs = load_runs(root)
    except RunError:
        if not pending:
            raise
        runs = {}
    best, best_rows = best_k_groups(runs)
    groups = {**runs, **best}  # the validation-best-k groups join every table but the across-k one
    sums = {env: summarize(rs) for env, rs in sorted(groups.items())}
    blocks = {**_tables(groups, sums), "mbrl-claims": _claims(sums)}
    if pending:
        blocks["mbrl-runs"] += "\n" + "\n".join("| " + " | ".join(map(str, r)) + " |" for r in pending)
    for name, block in (("mbrl-across-k", across_k_block(across_k(runs, N_BOOT))),
                        ("mbrl-best-k", best_k_block(best_rows))):  # fmt: skip
        if block is not None:
            blocks[name] = block
    err = model_error_block(runs)
    if err is not None:
        blocks["mbrl-model-error"] = err
    found = probes(root) if root.is_dir() else []
    probe = probe_block(found)
    if probe is not None:
        blocks["mbrl-probe"] = probe
        blocks["mbrl-replan"] = replan_block(found) or ""
    cs = curves(root)
    if cs:
        blocks["mbrl-decoder-curve"] = curve_block(cs)
        _copy(curve_figure(cs, root / "mbrl_decoder_curve.png"), page.parent / "mbrl_decoder_curve.png")
    bench = _bench_block(root / "bench_mbrl.json")
    if bench is not None:
        blocks["mbrl-bench"] = bench
    if sums:
        _copy(_figure(groups, sums, root / "mbrl_paired.png"), page.parent / "mbrl_paired.png")
    cmd = f"dcem-exp mbrl phase=report report.root={root} report.page={page}"
    made_from = sorted({r["_dir"] for rs in runs.values() for r in rs})  # finished runs: provenance lines
    return update_page(page, blocks, cmd, runs=made_from or None, allow_mixed=True)
