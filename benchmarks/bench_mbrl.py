"""Planning-step time of full-space CEM vs latent DCEM at the paper's sizes (sect. 5.2.2, App. D).

One planning step = solving the control problem of one state with the learned world model
(GRU 200, MLPs 2 x 200). Full CEM: H = 12, 10 iterations x 1000 samples, 100 elites. Latent
DCEM: 10 iterations x 100 samples, 10 elites, tau = 1, decoder 2 x 200 from a 16-d latent.
"dyn evals/s" counts one model transition of one candidate as one evaluation (each iteration rolls
out the samples and the current mean in one call, :mod:`dcem.planning`). The phase-2 row is
one decoder update (DCEM forward + backward) on a batch of replay states, the model row one
world-model update at App. D's batch (50 sequences x 50 steps, overshooting D = 12). "full CEM at
the latent budget" is full-space CEM with latent DCEM's sizes (100 x 10). Medians over
``--repeats`` runs; ratios against full CEM measured in the same run. ``--out FILE`` writes the
rows as JSON (``dcem-exp mbrl phase=report`` reads ``report.root/bench_mbrl.json``).

    PYTHONPATH=. python benchmarks/bench_mbrl.py [--device cuda] [--threads 1] [--repeats 5] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from dcem.control import ActionDecoder
from dcem.planning import PlannerConfig
from dcem.rl import FullCEMPlanner, LatentDCEMPlanner, WorldModel


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--obs-dim", type=int, default=17, help="cheetah-run: 17")
    ap.add_argument("--act-dim", type=int, default=6, help="cheetah-run: 6")
    ap.add_argument("--batch", type=int, default=32, help="replay states per phase-2 decoder update")
    ap.add_argument("--out", default=None, help="write the rows as JSON to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    H = 12
    model = WorldModel(args.obs_dim, args.act_dim, 200, 200).to(dev)
    for p in model.parameters():
        p.requires_grad_(False)
    dec = ActionDecoder(16, H, args.act_dim, -1.0, 1.0, hidden_sizes=(200, 200)).to(dev)
    opts = {"select": "mean", "capture": "auto"}  # the RL planners' defaults
    cem = FullCEMPlanner(model, H, PlannerConfig("cem", 1000, 100, 10, **opts), u_lower=-1.0, u_upper=1.0)
    budget = PlannerConfig("cem", 100, 10, 10, **opts)  # latent DCEM's samples x iterations
    cem_budget = FullCEMPlanner(model, H, budget, u_lower=-1.0, u_upper=1.0)
    latent = LatentDCEMPlanner(model, dec, PlannerConfig("dcem", 100, 10, 10, **opts))
    h = torch.zeros(1, 200, device=dev)
    x = torch.zeros(1, args.obs_dim, device=dev)
    hb = torch.zeros(args.batch, 200, device=dev)
    xb = torch.zeros(args.batch, args.obs_dim, device=dev)
    g = torch.Generator(device=dev).manual_seed(0)

    def dec_update():
        loss = latent.decoder_loss(hb, xb, generator=g)
        loss.backward()

    trained = WorldModel(args.obs_dim, args.act_dim, 200, 200).to(dev)
    o = torch.randn(50, 51, args.obs_dim, device=dev)
    a = torch.rand(50, 50, args.act_dim, device=dev) * 2 - 1
    r = torch.rand(50, 50, device=dev)

    def model_update():
        loss, _ = trained.loss(o, a, r, 12, 1.0, 1.0)
        loss.backward()

    rows = [
        ("full CEM (1000 x 10 it)", lambda: cem.plan(h, x, generator=g), 1001 * 10 * H),
        (
            "full CEM at the latent budget (100 x 10 it)",
            lambda: cem_budget.plan(h, x, generator=g),
            101 * 10 * H,
        ),
        ("latent DCEM (100 x 10 it)", lambda: latent.plan(h, x, generator=g), 101 * 10 * H),
        (f"phase-2 decoder update (B={args.batch}, fwd+bwd)", dec_update, args.batch * 101 * 10 * H),
        ("model update (50 x 50, D = 12, fwd+bwd)", model_update, 50 * 50 * 13),
    ]
    print(
        f"device {dev}, threads {torch.get_num_threads()}, obs {args.obs_dim}, act {args.act_dim}, "
        f"H {H}, GRU 200, repeats {args.repeats}"
    )
    print(f"{'planner':44s} {'median s':>10s} {'ratio':>8s} {'dyn evals/s':>14s}")
    base, out = None, []
    for name, fn, n_evals in rows:
        t = _time(fn, args.repeats, dev)
        base = base or t
        print(f"{name:44s} {t:10.4f} {t / base:8.3f} {n_evals / t:14.3e}")
        out.append({"name": name, "median_s": t, "ratio": t / base, "evals_per_s": n_evals / t})
    if args.out:
        info = {"device": str(dev), "threads": torch.get_num_threads(), "obs_dim": args.obs_dim,
                "act_dim": args.act_dim, "horizon": H, "repeats": args.repeats,
                "load": round(os.getloadavg()[0], 1), "rows": out}  # fmt: skip
        with open(args.out, "w") as fh:
            json.dump(info, fh, indent=2)


if __name__ == "__main__":
    main()
