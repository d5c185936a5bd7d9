"""Explorers build from one drawing function; one call gives the live slider and the player."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import yaml  # noqa: E402
from myst_nb.core.render import get_mime_priority  # noqa: E402

from rbmem_tutorial.widgets import WIDGET_VIEW, animation_html, explorer, slider  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "_config.yml"


def test_animation_html_draws_every_value_once():
    seen = []

    def draw(ax, value):
        seen.append(value)
        ax.plot([0, 1], [0, value])

    html = animation_html(draw, [0.5, 1.0, 2.0], label="a")
    assert "<script" in html.data
    # to_jshtml draws the first frame once more for initialisation; every value appears.
    assert set(seen) == {0.5, 1.0, 2.0}
    assert seen.count(2.0) == 1


def test_slider_offers_the_given_values():
    widget = slider(lambda ax, v: ax.plot([v]), [1.0, 3.0], label="t")
    control = widget.children[0]
    assert [v for _, v in control.options] == [1.0, 3.0]
    assert control.description == "t"


def test_explorer_is_one_output_carrying_the_widget_and_the_player():
    shown = explorer(lambda ax, v: ax.plot([0, 1], [0, v]), [1.0, 2.0, 4.0], label="slope")
    bundle = shown._repr_mimebundle_()
    assert bundle[WIDGET_VIEW]["model_id"] == shown.live.model_id
    assert [v for _, v in shown.live.children[0].options] == [1.0, 2.0, 4.0]
    assert shown.live.children[0].description == "slope"
    # The player holds one embedded PNG frame per value.
    assert bundle["text/html"] == shown.player
    assert shown.player.count("data:image/png;base64") == 3


def _chosen(bundle, builder):
    """The mime type myst-nb renders for ``bundle`` with the book's configuration."""
    overrides = yaml.safe_load(CONFIG.read_text())["sphinx"]["config"].get(
        "nb_mime_priority_overrides", [])
    priority = get_mime_priority(builder, [tuple(o) for o in overrides])
    return next(m for m in priority if m in bundle)


def test_the_web_book_shows_the_player_and_a_plain_widget_still_renders():
    shown = explorer(lambda ax, v: ax.plot([v]), [1.0, 2.0])
    assert _chosen(shown._repr_mimebundle_(), "html") == "text/html"
    assert _chosen(shown.live._repr_mimebundle_(), "html") == WIDGET_VIEW


@pytest.mark.parametrize("build", [slider, animation_html, explorer])
def test_empty_values_are_rejected(build):
    with pytest.raises(ValueError, match="values"):
        build(lambda ax, v: None, [])


def test_explorer_rejects_a_draw_that_is_not_a_function():
    with pytest.raises(TypeError, match="draw"):
        explorer("not a function", [1.0])
