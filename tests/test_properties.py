"""Property-based tests: random malformed inputs to the image loader, the parameter parser and the model call.

Whatever hypothesis generates, only :class:`~rrsr_lib.errors.InputError` may escape (or the call succeeds).
Together they try well over 500 inputs in every `make test`.
"""
import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rrsr_lib.errors import InputError
from rrsr_lib.images import load_rgb
from rrsr_lib.models import build_model
from rrsr_lib.train import check_params
from rrsr_lib.yaml_params import parse_yaml



def _settings(examples: int) -> settings:
    # no deadline (a busy machine must not fail a test by being slow); derandomized and without an example
    # database, so that every run tries the same inputs and writes nothing
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _image_bytes(data: st.DataObject) -> bytes:
    """A valid image file of a random mode and format, then maybe cut, flipped or overwritten."""
    h, w = data.draw(st.integers(1, 24)), data.draw(st.integers(1, 24))
    mode = data.draw(st.sampled_from(["RGB", "L", "RGBA", "P", "I;16", "CMYK", "1", "LA"]))
    fmt = data.draw(st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "GIF"]))
    arr = np.random.default_rng(data.draw(st.integers(0, 1000))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert("RGB" if mode == "I;16" else mode)
    if mode == "I;16":
        img = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    for candidate in (img, img.convert("RGB")):
        for f in (fmt, "TIFF", "PNG"):   # a format that cannot hold this mode: the next one
            buf = io.BytesIO()
            try:
                candidate.save(buf, format=f)
                break
            except (OSError, ValueError, KeyError):
                continue
        else:
            continue
        break
    raw = bytearray(buf.getvalue())
    damage = data.draw(st.sampled_from(["none", "cut", "flip", "zero"]))
    if damage == "cut":
        raw = raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)))]
    elif damage == "flip" and raw:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    elif damage == "zero":
        start = data.draw(st.integers(0, len(raw)))
        raw[start:] = bytes(len(raw) - start)
    return bytes(raw)


@_settings(300)
@given(data=st.data())
def test_the_image_loader_returns_rgb_or_one_input_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("img") / data.draw(st.sampled_from(["x.png", "x.jpg", "x.bmp", "x.tif", "x"]))
    path.write_bytes(_image_bytes(data))
    try:
        arr = load_rgb(path)
    except InputError:
        return
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3


_YAML_PIECES = st.sampled_from(["iterations", "lr", "seed", "betas", "model", ": ", "\n", "[", "]", "{", "}", ",",
                                "&a ", "*a", "- ", "010", "1:30", "1e-3", ".inf", ".nan", "no", "'", '"', "!!python/object ",
                                "0x1f", "-1", "true", " ", "#", "\t", "\x00", "\xff", "lr_milestones", "5"])


@_settings(300)
@given(text=st.one_of(st.lists(_YAML_PIECES, max_size=30).map("".join), st.text(max_size=60)))
def test_the_parameter_parser_gives_params_or_one_input_error(text):
    try:
        value = parse_yaml(text, "p.yaml")
        check_params(value if isinstance(value, dict) else {"iterations": value})
    except InputError:
        pass


@pytest.fixture(scope="module")
def small():
    return build_model("rrsr", "small", matching="vgg").eval()


_DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int64,
                           torch.bool])


def _tensor(data, dims_max: int = 5):
    shape = data.draw(st.lists(st.integers(0, 14), min_size=0, max_size=dims_max))
    dtype = data.draw(_DTYPES)
    t = torch.rand(shape) * data.draw(st.sampled_from([1.0, 255.0, -1.0, 1e-3]))
    if t.numel() and data.draw(st.booleans()):
        t.view(-1)[data.draw(st.integers(0, t.numel() - 1))] = data.draw(st.sampled_from([float("nan"), float("inf")]))
    return t.to(dtype) if dtype is not torch.bool else t > 0.5


@_settings(120)
@given(data=st.data())
def test_the_model_call_gives_an_image_or_one_input_error(small, data):
    lr = data.draw(st.one_of(st.just(None), st.integers(), st.builds(lambda: [1, 2]), st.builds(lambda: _tensor(data))))
    ref = data.draw(st.one_of(st.just(None), st.builds(lambda: _tensor(data))))
    try:
        with torch.no_grad():
            sr = small(lr, ref)
    except InputError:
        return
    assert sr.dim() == 4 and sr.shape[1] == 3 and torch.isfinite(sr).all()
