import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402

from rrsr_lib.errors import InputError  # noqa: E402
from rrsr_lib.evaluate import Bicubic, LevelPairs  # noqa: E402
from rrsr_lib.explorers.levels import draw_levels, level_view  # noqa: E402


@pytest.fixture(scope="module")
def pairs():
    return LevelPairs(patch=64, seed=0, pairs=["aloe", "books"])


def test_level_view_shapes_and_psnr(pairs):
    v = level_view(Bicubic(), pairs, image=1, level=3)
    assert v["lr"].shape == (16, 16, 3) and v["sr"].shape == v["hr"].shape == (64, 64, 3)
    assert v["name"] == "books#L3" and 10 < v["psnr_y"] < 60


def test_static_figure_has_five_levels(pairs):
    fig, values = draw_levels(Bicubic(), pairs, image=0, model_name="bicubic")
    assert len(values) == 5 and len(fig.axes) == 20


def test_widget_redraws_for_the_chosen_level(pairs, monkeypatch):
    from rrsr_lib.explorers import levels
    seen = []
    real = levels.level_view
    monkeypatch.setattr(levels, "level_view", lambda m, p, image, level, device: seen.append((image, level)) or real(m, p, image, level, device))
    box = levels.levels_explorer({"bicubic": Bicubic()}, pairs)
    level_slider, image_dropdown = box.children[0].children[:2]
    level_slider.value = 4
    image_dropdown.value = 1
    assert seen == [(0, 1), (0, 4), (1, 4)]


def test_bad_level(pairs):
    with pytest.raises(InputError, match="level must be 1-5"):
        level_view(Bicubic(), pairs, 0, 6)
