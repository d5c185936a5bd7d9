"""Sliders that work in a live notebook and on the static web page.

A slider driven by a Python callback needs a running kernel, so every explorer in the book
comes in two forms built from the same drawing function ``draw(ax, value)``:

- :func:`slider` returns an ``ipywidgets`` slider that redraws live in Jupyter;
- :func:`animation_html` precomputes one frame per value and returns a JavaScript player
  (``matplotlib.animation.FuncAnimation.to_jshtml``) that runs in the built book, no kernel needed.

Example
-------
>>> import numpy as np
>>> def draw(ax, a):
...     x = np.linspace(0, 1, 50)
...     ax.plot(x, x**a)
>>> html = animation_html(draw, [1.0, 2.0], label="a")
>>> "<script" in html.data
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
from matplotlib import animation


def _check_values(values: Sequence[float]) -> list[float]:
    values = list(values)
    if not values:
        raise ValueError("values must hold at least one slider position, e.g. [0.0, 0.5, 1.0].")
    return values


def slider(
    draw: Callable, values: Sequence[float], *, label: str = "value", figsize=(5.0, 4.0)
):
    """Live ipywidgets explorer: a selection slider over ``values`` that calls ``draw(ax, value)``.

    Parameters
    ----------
    draw : callable
        ``draw(ax, value)`` draws one frame on a fresh matplotlib axes.
    values : sequence of float
        The slider positions.
    label : str
        The slider's description.
    figsize : tuple
        Size of each redrawn figure.

    Returns
    -------
    ipywidgets.interactive
        Display it (it is the last expression of a cell) to get the slider.
    """
    import ipywidgets

    values = _check_values(values)

    def redraw(value):
        fig, ax = plt.subplots(figsize=figsize)
        draw(ax, value)
        plt.show()

    control = ipywidgets.SelectionSlider(
        options=[(f"{v:g}", v) for v in values], value=values[0], description=label,
        continuous_update=False,
    )
    return ipywidgets.interactive(redraw, value=control)


def animation_html(
    draw: Callable, values: Sequence[float], *, label: str = "value", figsize=(5.0, 4.0),
    interval_ms: int = 600,
):
    """Kernel-free explorer: one precomputed frame per value, played by a JavaScript slider.

    Parameters
    ----------
    draw, values, label, figsize
        As in :func:`slider`; each frame's title gets ``label = value`` appended.
    interval_ms : int
        Delay between frames when playing.

    Returns
    -------
    IPython.display.HTML
        The player; it works in Jupyter and in the static book.
    """
    from IPython.display import HTML

    values = _check_values(values)
    fig, ax = plt.subplots(figsize=figsize)

    def frame(i):
        ax.clear()
        draw(ax, values[i])
        title = ax.get_title()
        ax.set_title(f"{title}  ({label} = {values[i]:g})" if title else f"{label} = {values[i]:g}")
        return []

    anim = animation.FuncAnimation(fig, frame, frames=len(values), interval=interval_ms)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return HTML(html)
