"""Comparisons across re-planning intervals for the MBRL report (blocks ``mbrl-across-k``,
``mbrl-best-k``).

A controller may do best at its own ``k`` (actions executed per plan before re-planning): on the
validation episodes of ``phase=probe`` full CEM is best re-planning every step and the latent
controller committing to several actions. The paired evaluations at ``k = 1`` (``eval.json``) and
at ``k > 1`` (``eval_replan<k>.json``) of one run folder use the same seeded test episodes, so a
controller at ``k`` can be compared with another at ``1`` episode by episode, with the training
seed as the unit (:func:`.stats.compare`) -- only on the seeds both groups have, and only where their
episode seeds agree (else :class:`RunError`).

:func:`best_k_groups` adds, per task, the group "each at its validation-best k": in every run folder
each planning controller's test returns at the ``k`` its ``phase=probe`` sweep found best on that
run's validation episodes (+ PPO at latent DCEM's ``k``; random at ``k = 1``), a protocol fixed before
the test episodes are read. A task whose folders lack one of the needed evaluations gets no such
group; :func:`best_k_block` lists the choices and the ``phase=eval`` runs still missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from dcem.experiments.common.report import fmt_ci, md_table
from dcem.experiments.common.runs import RunError
from dcem.experiments.mbrl.stats import compare

__all__ = ["ACROSS", "across_k", "across_k_block", "best_k", "best_k_block", "best_k_groups"]

#: (numerator at k, denominator at 1): the latent controllers at their interval against the
#: full-space planners re-planning every step, and each planner against itself at ``k = 1``
ACROSS = [
    ("latent_dcem", "full_cem"),
    ("latent_dcem", "full_cem_budget"),
    ("latent_dcem_ppo", "full_cem"),
    ("latent_dcem", "latent_dcem"),
    ("full_cem", "full_cem"),
    ("full_cem_budget", "full_cem_budget"),
]
_SUFFIX = re.compile(r"^(?P<base>.*) \(re-plan every (?P<k>\d+)\)$")


def _paired(at_k: list[dict], at_1: list[dict], group: str) -> list[tuple[dict, dict]]:
    one = {r["seed"]: r for r in at_1}
    pairs = [(r, one[r["seed"]]) for r in at_k if r["seed"] in one]
    for a, b in pairs:
        if list(a["episode_seeds"]) != list(b["episode_seeds"]):
            raise RunError(f"{a['_dir']}: the test episodes at k > 1 and at k = 1 differ ({group}); "
                           "rerun phase=eval at both intervals with the same eval.episodes")  # fmt: skip
    return pairs


def across_k(runs: dict[str, list[dict]], n_boot: int = 2000) -> list[dict]:
    """One entry per (task, ``k``, comparison of :data:`ACROSS`) whose controllers both groups
    evaluated: ``{"task", "k", "num", "den", "seeds", **compare(...)}``."""
    out = []
    gen = np.random.default_rng(0)
    for group, rs in sorted(runs.items()):
        m = _SUFFIX.match(group)
        if m is None or m["base"] not in runs:
            continue
        pairs = _paired(rs, runs[m["base"]], group)
        for a, b in ACROSS:
            if not pairs or not all(a in x["controllers"] and b in y["controllers"] for x, y in pairs):
                continue
            num = [np.asarray(x["controllers"][a]["returns"], float) for x, _ in pairs]
            den = [np.asarray(y["controllers"][b]["returns"], float) for _, y in pairs]
            out.append({"task": m["base"], "k": int(m["k"]), "num": a, "den": b,
                        "size": f"{len(pairs)} × {min(v.size for v in num)}",
                        **compare(num, den, gen, n_boot)})  # fmt: skip
    return out


def across_k_block(comps: list[dict]) -> str | None:
    """The ``mbrl-across-k`` table (``None`` when no task has evaluations at two intervals)."""
    if not comps:
        return None
    rows = []
    for c in comps:
        lo, hi = c["ratio_boot_seeds"]
        if not c["verdict"]:
            word = f"no verdict ({c['seeds']} seed(s))"
        else:
            word = "above 1" if lo > 1 else ("below 1" if hi < 1 else "not separable from 1")
        rows.append([c["task"], f"{c['num']} @ k = {c['k']} / {c['den']} @ k = 1", c["size"],
                     fmt_ci(*c["ratio_seeds"]), f"{c['ratio_pooled']:.3f} [{lo:.3f}, {hi:.3f}]: {word}",
                     fmt_ci(*c["diff_seeds"])])  # fmt: skip
    head = ["task", "comparison", "seeds × episodes", "ratio of means per seed (95% t over seeds)",
            "pooled ratio [bootstrap 95%: seeds, then episodes]", "difference per seed (95% t over seeds)"]
    return md_table(head, rows)


#: the controllers whose test returns are taken at another controller's validation-best ``k``
FOLLOW = {"latent_dcem_ppo": "latent_dcem"}
BEST_SUFFIX = " (each at its validation-best k)"


def best_k(probe: dict) -> dict[str, int]:
    """Per controller of a ``probe.json``'s re-planning sweep, the ``k`` with the highest mean
    validation return (the smallest such ``k`` on a tie)."""
    out = {}
    for name, by_k in probe.get("replan", {}).items():
        out[name] = int(max(by_k, key=lambda k: (by_k[k]["mean"], -int(k))))
    return out


def _chosen(name: str, ks: dict[str, int]) -> int | None:
    if name == "random":
        return 1
    return ks.get(FOLLOW.get(name, name))


def best_k_groups(runs: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], list[list]]:
    """``(groups, rows)``: the validation-best-``k`` group of every task whose run folders all have a
    ``probe.json`` and every needed evaluation, and one row per run folder (task, seed, chosen ``k``
    per controller, missing evaluations) for :func:`best_k_block`."""
    by_dir: dict[tuple[str, int], dict] = {}
    for rs in runs.values():
        for r in rs:
            by_dir[(r["_dir"], int(r.get("replan_every", 1)))] = r
    groups, rows = {}, []
    for group, rs in sorted(runs.items()):
        if _SUFFIX.match(group):
            continue
        made, complete = [], True
        for r in rs:
            probe = Path(r["_dir"]) / "probe.json"
            if not probe.is_file():
                complete = False
                rows.append([group, r["seed"], "no probe.json", "`phase=probe`"])
                continue
            ks = best_k(json.loads(probe.read_text()))
            ctrls, missing = {}, []
            for name in r["controllers"]:
                k = _chosen(name, ks)
                src = None if k is None else by_dir.get((r["_dir"], k))
                if src is not None and name in src["controllers"]:
                    ctrls[name] = {**src["controllers"][name], "replan_every": k}
                elif k is not None:
                    missing.append(k)
            need = ", ".join(f"`phase=eval eval.replan_every={k}`" for k in sorted(set(missing)))
            rows.append([group, r["seed"], ", ".join(f"{n} {k}" for n, k in sorted(ks.items())), need or "–"])
            complete = complete and not missing
            made.append({**r, "controllers": ctrls, "replan_every": None})
        if made and complete:
            groups[group + BEST_SUFFIX] = made
    return groups, rows


def best_k_block(rows: list[list]) -> str | None:
    """The ``mbrl-best-k`` table: each run's validation-best ``k`` per controller and the evaluations
    its validation-best-``k`` group still needs (``None`` without probes)."""
    if not rows:
        return None
    head = ["task", "seed", "validation-best k per controller (probe sweep)", "missing test evaluations"]
    return md_table(head, rows)
