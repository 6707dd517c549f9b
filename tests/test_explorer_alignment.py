"""Tests of rrsr_lib.explorers.alignment: tap positions before/after the residual, figure, widget."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rrsr_lib.errors import InputError  # noqa: E402
from rrsr_lib.explorers import alignment as explorer  # noqa: E402
from rrsr_lib.offsets import pre_offsets, to_deform_offsets  # noqa: E402


def _state(residual_dx=0.5):
    h, w = 6, 8
    flow = torch.zeros(1, h, w, 2)
    flow[..., 0] = 2.0   # everything matched 2 LR pixels to the right
    inputs, refs, before, after = {}, {}, {}, {}
    for s in (1, 2, 4):
        pre = to_deform_offsets(pre_offsets(flow, s), groups=2)
        residual = torch.zeros_like(pre)
        residual[:, 1::2] = residual_dx          # every dx moved by the residual
        inputs[s], refs[s] = torch.rand(3, h * s, w * s), torch.rand(3, h * s, w * s)
        before[s], after[s] = pre, pre + residual
    return explorer.alignment_state(inputs, refs, before, after)


def test_tap_view_positions():
    state = _state()
    v = explorer.tap_view(state, fy=0.5, fx=0.5, scale=2)
    y, x = v["position"]
    assert (y, x) == (round(0.5 * 11), round(0.5 * 15))
    # tap (i, j) reads p + (i - 1, j - 1) + flow * s (interior point: every tap has the matched flow)
    expected = np.array([[y + i - 1, x + j - 1 + 2 * 2] for i in range(3) for j in range(3)], dtype=np.float32)
    np.testing.assert_allclose(v["before"], expected)
    np.testing.assert_allclose(v["after"], expected + [0, 0.5])
    assert v["shift"] == pytest.approx(0.5)


def test_static_figure_and_errors():
    state = _state()
    fig, views = explorer.draw_alignment(state, 0.3, 0.7)
    assert sorted(views) == [1, 2, 4] and len(fig.axes) == 6
    with pytest.raises(InputError, match="scale"):
        explorer.tap_view(state, 0.5, 0.5, 3)
    with pytest.raises(InputError, match="fractions"):
        explorer.tap_view(state, 1.5, 0.5, 1)


def test_widget_redraws(monkeypatch):
    state = _state()
    seen = []
    real = explorer.tap_view
    monkeypatch.setattr(explorer, "tap_view", lambda st, fy, fx, s: seen.append((fy, fx, s)) or real(st, fy, fx, s))
    box = explorer.alignment_explorer(state)
    fy, fx, scale = box.children[0].children
    fy.value = 0.25
    scale.value = 4
    assert seen == [(0.5, 0.5, 1), (0.25, 0.5, 1), (0.25, 0.5, 4)]


def test_state_from_a_model_trace():
    from rrsr_lib.models import build_model
    model = build_model("rrsr", "small").eval()
    lr, ref = torch.rand(1, 3, 7, 6), torch.rand(1, 3, 28, 24)
    trace = {}
    with torch.no_grad():
        model(lr, ref, trace=trace)
    state = explorer.state_from_trace(trace, lr, ref)
    assert sorted(state) == [1, 2, 4]
    assert state[4]["input"].shape == (28, 24, 3) and state[1]["ref"].shape == (7, 6, 3)
    # untrained: the residual is zero, so before == after
    v = explorer.tap_view(state, 0.5, 0.5, 4)
    assert v["shift"] == 0.0
