"""Interactive explorers for the notebooks (ipywidgets), one module per notebook topic.

The logic of each explorer (what to compute and draw for a given widget state) lives in plain
functions that the tests call directly; the widget wrapper only wires sliders to those functions.
Each explorer can also draw a static figure of its default state, so that executed notebooks
(papermill, nbval: no browser) and figures/ still show it.
"""
