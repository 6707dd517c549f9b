"""Tests of rrsr_lib.explorers.show_explorer: the shared wiring of every explorer (controls -> redraw)."""
import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")

from rrsr_lib.explorers import show_explorer  # noqa: E402


def test_every_control_change_redraws_with_the_new_value():
    a = widgets.IntSlider(value=1, min=0, max=9)
    b = widgets.Dropdown(options=["x", "y"], value="x")
    seen = []
    box = show_explorer([a, b], lambda: seen.append((a.value, b.value)))
    assert seen == [(1, "x")]                      # drawn once on display
    a.value = 4
    b.value = "y"
    assert seen == [(1, "x"), (4, "x"), (4, "y")]  # and again on each change, with the values of that moment
    controls, out = box.children
    assert list(controls.children) == [a, b] and isinstance(out, widgets.Output)
