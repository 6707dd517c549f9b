"""Interactive explorers for the notebooks (ipywidgets), one module per notebook topic.

The logic of each explorer (what to compute and draw for a given widget state) lives in plain
functions that the tests call directly; the widget wrapper only wires sliders to those functions.
Each explorer can also draw a static figure of its default state, so that executed notebooks
(papermill, nbval: no browser) and figures/ still show it.
"""


def show_explorer(controls: list, draw):
    """Display ``controls`` (ipywidgets) in a row above an Output that ``draw()`` fills with a matplotlib figure.

    draw: a function of no arguments that reads the controls' values and draws the current state; it runs
    once now and again whenever a control's value changes, and its figure replaces the previous one.
    Returns the displayed VBox([HBox(controls), Output]).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    out = widgets.Output()

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            draw()
            plt.show()

    for control in controls:
        control.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([widgets.HBox(list(controls)), out])
    display(box)
    return box
