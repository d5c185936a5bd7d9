"""The two explorers build from one drawing function and call it once per value."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from rbmem_tutorial.widgets import animation_html, slider  # noqa: E402


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


@pytest.mark.parametrize("explorer", [slider, animation_html])
def test_empty_values_are_rejected(explorer):
    with pytest.raises(ValueError, match="values"):
        explorer(lambda ax, v: None, [])
