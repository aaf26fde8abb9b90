"""Figures and animations of the experiments: one style, applied locally, and one GIF writer.

Figures are ``matplotlib.figure.Figure`` objects (no pyplot, no backend selection, nothing
global); :func:`style` is a ``matplotlib.rc_context`` so no rcParams change outlives a plot.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dcem.experiments.common.runs import atomic_open

__all__ = ["STYLE", "figure", "frame", "save", "style", "write_gif"]

#: readable at the saved sizes: no text under 9 pt
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 11,
    "image.cmap": "viridis",
}


@contextlib.contextmanager
def style(**extra: Any) -> Iterator[None]:
    """Apply :data:`STYLE` (and ``extra`` rcParams) inside the block only."""
    import matplotlib

    with matplotlib.rc_context({**STYLE, **extra}):
        yield


def figure(**kw: Any) -> Any:
    """A new ``Figure`` (call it inside :func:`style`)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'dcem[experiments]'") from err
    return Figure(**kw)


def save(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically; returns the path."""
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    return path


def frame(fig: Any, dpi: int = 80) -> Any:
    """The figure rendered to an RGB ``uint8`` array ``(H, W, 3)`` (one GIF frame)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_gif(path: str | os.PathLike, frames: Sequence[Any], fps: float = 10.0, hold_last: int = 0) -> Path:
    """Animated GIF of RGB arrays ``(H, W, 3)`` (needs pillow), written atomically."""
    from PIL import Image

    if not frames:
        raise ValueError("write_gif needs at least one frame")
    imgs = [Image.fromarray(f) for f in frames] + [Image.fromarray(frames[-1])] * hold_last
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        imgs[0].save(fh, format="GIF", save_all=True, append_images=imgs[1:],
                     duration=max(20, round(1000 / fps)), loop=0)  # fmt: skip
    return path
