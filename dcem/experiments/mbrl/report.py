"""``dcem-exp mbrl phase=report``: the generated blocks of ``docs/results/mbrl.md`` from run folders.

Reads every paired ``eval.json`` (:mod:`.paired`) under ``report.root`` (recursively), groups the
runs by task and writes, between the page's ``report:`` markers (:mod:`..common.report`):

- ``mbrl-paired``: per task and controller the mean return with a 95% Student-t interval over
  all seeds x test episodes, the per-seed means and the trajectories per planning step;
- ``mbrl-paired-diffs``: paired comparisons per task: the ratio of means per seed (mean and
  t-interval over seeds), the pooled ratio of means with a paired bootstrap interval (episodes
  resampled jointly for every controller, fixed seed) and the per-episode paired difference;
- ``mbrl-claims``: per task, the paper's claims read off those intervals (latent DCEM reaching
  0.9 of full CEM; PPO improving latent DCEM) and the same-budget control;
- ``mbrl-runs``: the run folders (seed, snapshots' environment steps, episodes);
- ``mbrl-bench``: the planning-step timings of ``benchmarks/bench_mbrl.py --out
  ROOT/bench_mbrl.json`` when that file exists (CPU; any GPU figure is an extrapolation);

and the figure ``mbrl_paired.png`` (copied next to the page).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from dcem.experiments.common.report import copy_figure, fmt_ci, md_table, update_page
from dcem.experiments.common.runs import RunError, bootstrap_ratio, mean_ci95
from dcem.experiments.mbrl.paired import CONTROLLERS

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
]
N_BOOT = 2000


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
    """``{env: [eval.json dicts sorted by seed]}`` of the paired evaluations under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"report.root={str(root)!r} is not a folder (run the experiment there first)")
    runs: dict[str, list[dict]] = {}
    for path in sorted(root.rglob("eval.json")):
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise RunError(f"{path}: unreadable ({type(err).__name__}); rerun phase=eval there") from None
        res = _check_run(res, path)
        res["_dir"] = str(path.parent)
        runs.setdefault(str(res["env"]), []).append(res)
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
                          "traj": rs[0]["controllers"][name].get("trajectories_per_step", 0)}  # fmt: skip
    comps = []
    gen = np.random.default_rng(0)
    for a, b in COMPARISONS:
        num, den = _matrix(rs, a), _matrix(rs, b)
        if num is None or den is None:
            continue
        ratios = [x.mean() / y.mean() if y.mean() != 0 else math.nan for x, y in zip(num, den)]
        pooled = float(np.concatenate(num).mean() / np.concatenate(den).mean())
        comps.append({"num": a, "den": b, "ratio_seeds": mean_ci95(ratios), "ratio_pooled": pooled,
                      "ratio_boot": bootstrap_ratio(num, den, gen, N_BOOT),
                      "diff": mean_ci95(np.concatenate([x - y for x, y in zip(num, den)])),
                      "n": int(sum(x.size for x in num))})  # fmt: skip
    return {"controllers": ctrl, "comparisons": comps, "seeds": [r["seed"] for r in rs]}


CTRL_HEAD = [
    "task",
    "controller",
    "snapshot",
    "trajectories / step",
    "seeds × episodes",
    "return (95% CI, pooled)",
    "per-seed means",
]
COMP_HEAD = [
    "task",
    "comparison",
    "ratio of means per seed (95% CI over seeds)",
    "pooled ratio [paired bootstrap 95%]",
    "paired difference per episode (95% CI)",
    "pairs",
]
RUN_HEAD = ["task", "seed", "run folder", "env steps at each snapshot", "test episodes"]


def _tables(runs: dict[str, list[dict]], sums: dict[str, dict]) -> dict[str, str]:
    rows, crow, rrow = [], [], []
    for env, s in sums.items():
        size = f"{len(s['seeds'])} × {len(runs[env][0]['episode_seeds'])}"
        for name, c in s["controllers"].items():
            snap = runs[env][0]["controllers"][name]["snapshot"]
            per_seed = ", ".join(f"{v:.4g}" for v in c["per_seed"])
            rows.append([env, name, snap, c["traj"] or "–", size, fmt_ci(*c["pooled"]), per_seed])
        for c in s["comparisons"]:
            lo, hi = c["ratio_boot"]
            boot = f"{c['ratio_pooled']:.3f} [{lo:.3f}, {hi:.3f}]"
            crow.append(
                [env, f"{c['num']} / {c['den']}", fmt_ci(*c["ratio_seeds"]), boot, fmt_ci(*c["diff"]), c["n"]]
            )
        for r in runs[env]:
            steps = ", ".join(f"{k} {v['progress']['env_steps']}" for k, v in r["snapshots"].items())
            rrow.append([env, r["seed"], r["_dir"], steps, len(r["episode_seeds"])])
    return {"mbrl-paired": md_table(CTRL_HEAD, rows), "mbrl-paired-diffs": md_table(COMP_HEAD, crow),
            "mbrl-runs": md_table(RUN_HEAD, rrow)}  # fmt: skip


def _verdict_ratio(c: dict | None, level: float) -> str:
    if c is None:
        return "not evaluated"
    lo, hi = c["ratio_boot"]
    where = "above" if lo >= level else ("below" if hi < level else "not separable from")
    return f"{c['ratio_pooled']:.3f} [{lo:.3f}, {hi:.3f}]: {where} {level:g}"


def _verdict_diff(c: dict | None) -> str:
    if c is None:
        return "not evaluated"
    m, h = c["diff"]
    if math.isnan(h):
        return f"{m:+.3g} (one pair)"
    word = "higher" if m - h > 0 else ("lower" if m + h < 0 else "no significant difference")
    return f"{m:+.3g} ± {h:.2g}: {word}"


def _claims(sums: dict[str, dict]) -> str:
    """One row per task: the paper's two claims and the same-budget control, read off the CIs."""
    rows = []
    for env, s in sums.items():
        comp = {(c["num"], c["den"]): c for c in s["comparisons"]}
        rows.append([env, _verdict_ratio(comp.get(("latent_dcem", "full_cem")), 0.9),
                     _verdict_diff(comp.get(("latent_dcem_ppo", "latent_dcem"))),
                     _verdict_diff(comp.get(("latent_dcem", "full_cem_budget"))),
                     _verdict_diff(comp.get(("full_cem_budget", "full_cem")))])  # fmt: skip
    head = ["task", "latent DCEM / full CEM ≥ 0.9? (pooled ratio [bootstrap 95%])",
            "PPO − no PPO per episode (95% CI)", "latent DCEM − same-budget full CEM",
            "same-budget full CEM − full CEM"]  # fmt: skip
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
            ax.set_title(f"{env} ({len(s['seeds'])} seeds × {n_ep} ep.)", fontsize=9)
        axes[0].set_ylabel("test return (paired episodes)")
        return plots.save(fig, path, dpi=100)


def report(cfg: dict) -> Path:
    """Rewrite the generated blocks of ``report.page`` from ``report.root``; returns the page."""
    root, page = Path(cfg["report"]["root"]), Path(cfg["report"]["page"])
    runs = load_runs(root)
    sums = {env: summarize(rs) for env, rs in sorted(runs.items())}
    blocks = {**_tables(runs, sums), "mbrl-claims": _claims(sums)}
    bench = _bench_block(root / "bench_mbrl.json")
    if bench is not None:
        blocks["mbrl-bench"] = bench
    fig = _figure(runs, sums, root / "mbrl_paired.png")
    copy_figure(fig, page.parent / "mbrl_paired.png")
    cmd = f"dcem-exp mbrl phase=report report.root={root} report.page={page}"
    return update_page(page, blocks, cmd)
