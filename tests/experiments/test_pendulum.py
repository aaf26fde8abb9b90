import json

from dcem.experiments import pendulum


def test_pendulum_example_tiny(tmp_path):
    out = tmp_path / "p"
    pendulum.main(
        [
            f"out_dir={out}",
            "n_systems=2",
            "n_steps=4",
            "horizon=5",
            "mpc.n_sample=20",
            "mpc.n_elite=4",
            "mpc.n_iter=2",
            "progress=false",
            "n_animate=2",
        ]
    )
    for f in ("trajectories.png", "trajectories.pt", "summary.json", "swingup.gif"):
        assert (out / f).exists(), f
    s = json.loads((out / "summary.json").read_text())
    assert s["n_steps"] == 4 and 0.0 <= s["frac_upright_last_10_steps"] <= 1.0
