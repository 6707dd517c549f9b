"""The project's RRSR is the authors' network: numbers from their own architecture code, and their weight files.

tests/fixtures/authors_rrsr/ holds outputs of the authors' RestorationNet on random weights (its README says
how they were made); the key lists give the layout of their released files.
"""
import json
from pathlib import Path

import pytest
import torch

from rrsr_lib.authors_weights import FEATURE_LAYERS, authors_key, map_restoration_state, restoration_key_map
from rrsr_lib.checkpoints import load_authors_checkpoint
from rrsr_lib.errors import InputError
from rrsr_lib.models import RRSR, resolve_config
from rrsr_lib.vgg import VGGFeatures

FIXTURES = Path(__file__).parent / "fixtures" / "authors_rrsr"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _NoMatching(torch.nn.Module):
    """Stands in for the matching trunks where the test feeds pre-offsets directly."""

    def forward(self, lr_up, ref):
        raise AssertionError("the matching front end must not run in this test")


@pytest.fixture(scope="module")
def tiny():
    return torch.load(FIXTURES / "restoration_tiny.pt", weights_only=True)


@pytest.fixture(scope="module")
def texture():
    return VGGFeatures(("relu1_1", "relu2_1", "relu3_1"), weights="vgg16")


def _tiny_model(fixture, texture, **overrides) -> RRSR:
    c = fixture["config"]
    # RestorationNet(ngf, n_blocks, groups, num_experts): n_blocks in the content extractor and at x1; the
    # cascades keep the authors' 5 blocks per stage and 1/3/3 stages; offset branch and gate at full width
    cfg = resolve_config("paper", channels=c["ngf"], content_blocks=c["n_blocks"], x1_blocks=c["n_blocks"],
                         groups=c["groups"], experts=c["num_experts"], **overrides)
    model = RRSR(cfg, matching_features=_NoMatching(), texture=texture)
    state = map_restoration_state(fixture["state_dict"], model)
    model.load_state_dict(state, strict=False)
    return model.double().eval()


def _restore(model, fixture, original_size):
    inp = fixture["inputs"]
    offsets = {1: inp["pre_offset"]["relu3_1"], 2: inp["pre_offset"]["relu2_1"], 4: inp["pre_offset"]["relu1_1"]}
    with torch.no_grad():
        return model.restore(inp["x"].double(), {s: o.double() for s, o in offsets.items()},
                             {k: v.double() for k, v in inp["img_ref_feat"].items()}, original_size)


def test_the_fixture_outputs_differ_with_padding_so_that_both_checks_mean_something(tiny):
    gap = (tiny["outputs"]["full"] - tiny["outputs"]["padded"]).abs().max().item()
    assert gap > 1e-6


@pytest.mark.parametrize("deform_path", ["sampling", "torchvision"])
@pytest.mark.parametrize("case", ["full", "padded"])
def test_the_network_reproduces_the_authors_restoration_net_within_1e_9_in_float64(tiny, texture, case, deform_path):
    # measured 2026-12-02: 2.2e-16 (full) and 1.7e-16 (padded), both deformable-convolution paths
    model = _tiny_model(tiny, texture, deform_path=deform_path)
    original_size = tuple(tiny["inputs"]["original_size_padded"]) if case == "padded" else None
    out = _restore(model, tiny, original_size)
    expected = tiny["outputs"][case]
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() <= 1e-9


def test_the_legacy_selection_variant_does_not_reproduce_the_authors_network(tiny, texture):
    # the activation after the gate, which the checkpoints shipped before 2026-12-02 carry, changes the output
    model = _tiny_model(tiny, texture, selection_activation="lrelu")
    out = _restore(model, tiny, None)
    assert (out - tiny["outputs"]["full"]).abs().max().item() > 1e-3


def test_every_key_of_the_released_restoration_layout_maps_to_a_project_tensor_of_the_same_shape():
    layout = json.loads((FIXTURES / "restoration_paper_keys.json").read_text())
    assert len(layout) == 370
    model = RRSR(resolve_config("paper"), matching_features=_NoMatching(),
                 texture=VGGFeatures(("relu1_1", "relu2_1", "relu3_1"), weights="vgg16"))
    key_map = restoration_key_map(model)
    assert set(key_map) == set(layout)
    ours = model.state_dict()
    assert all(tuple(ours[key_map[k]].shape) == tuple(shape) for k, shape in layout.items())
    assert sum(torch.Size(s).numel() for s in layout.values()) == 22_594_651


def test_authors_key_names_one_tensor_by_rule():
    assert authors_key("x2.1.align.offset_mask.weight") == "dyn_agg_restore.medium_dyn_agg_second.conv_offset_mask.weight"
    assert authors_key("x2.2.align.offset_conv1.bias") == "dyn_agg_restore.medium_offset_conv1_third.bias"
    assert authors_key("x1.0.select.gate.excite.weight") == "dyn_agg_restore.head_small.se.2.weight"
    assert authors_key("x4.0.select.condconv.routing.bias") == "dyn_agg_restore.head_large_first.routing_func.0.bias"
    assert authors_key("up2.conv.weight") == "dyn_agg_restore.tail_medium.0.weight"
    assert authors_key("content.body.3.conv2.bias") == "content_extractor.body.3.conv2.bias"
    with pytest.raises(InputError, match="3 stages"):
        authors_key("x4.3.body.0.conv1.weight")


def _released_files(tmp_path: Path, prefix: str = ""):
    """Files in the released layout, every tensor distinct random numbers, saved as the authors save them."""
    g = torch.Generator().manual_seed(0)
    layout = json.loads((FIXTURES / "restoration_paper_keys.json").read_text())
    restoration = {prefix + k: torch.randn(shape, generator=g) * 0.02 for k, shape in layout.items()}
    features = {}
    for k, shape in json.loads((FIXTURES / "feature_extraction_keys.json").read_text()).items():
        if k.endswith(".mean"):
            features[k] = torch.tensor(IMAGENET_MEAN).view(shape)
        elif k.endswith(".std"):
            features[k] = torch.tensor(IMAGENET_STD).view(shape)
        else:
            features[k] = torch.randn(shape, generator=g) * 0.05
    torch.save(restoration, tmp_path / "network_mse.pth")
    torch.save(features, tmp_path / "feature_extraction.pth")
    return restoration, features


@pytest.mark.parametrize("prefix", ["", "module."])
def test_files_in_the_released_format_load_with_every_tensor_where_the_mapping_says(tmp_path, prefix):
    restoration, features = _released_files(tmp_path, prefix)
    model = load_authors_checkpoint(tmp_path / "network_mse.pth", tmp_path / "feature_extraction.pth")
    assert not model.training
    assert model.config.selection_activation == "none" and model.config.lr_up == "pil"
    ours = model.state_dict()
    for k, v in restoration.items():
        assert torch.equal(ours[restoration_key_map(model)[k[len(prefix):]]], v), k
    trunks = {"feature_extraction_image1": "input_trunk", "feature_extraction_image2": "ref_trunk"}
    for k, v in features.items():
        image, _, rest = k.partition(".")
        trunk = getattr(model.matcher.features, trunks[image])
        if rest in ("mean", "std"):
            assert torch.equal(getattr(trunk, rest), v)
        else:
            layer, p = rest[len("model."):].split(".")
            assert torch.equal(getattr(trunk.body[FEATURE_LAYERS[layer]], p), v), k
    with torch.no_grad():
        sr = model(torch.rand(1, 3, 12, 12), torch.rand(1, 3, 48, 48))
    assert sr.shape == (1, 3, 48, 48) and torch.isfinite(sr).all()


# (which file, the edit, the message): one wrong key or shape each
_BAD_FILES = {
    "unexpected key": ("restoration", lambda d: d.update({"dyn_agg_restore.head_small.extra": torch.zeros(3)}),
                       r"unexpected key 'dyn_agg_restore\.head_small\.extra'"),
    "wrong shape": ("restoration", lambda d: d.update({"dyn_agg_restore.tail_large.2.weight": torch.zeros(3, 32, 5, 5)}),
                    r"'dyn_agg_restore\.tail_large\.2\.weight' has shape \[3, 32, 5, 5\], expected \[3, 32, 3, 3\]"),
    "missing key": ("restoration", lambda d: d.pop("content_extractor.conv_first.bias"),
                    r"'content_extractor\.conv_first\.bias' \(shape \[64\]\) is missing"),
    "trunk shape": ("features", lambda d: d.update({"feature_extraction_image2.model.conv3_1.weight": torch.zeros(128, 128, 3, 3)}),
                    r"feature_extraction_image2\.model\.conv3_1\.weight' has shape \[128, 128, 3, 3\]"),
}


@pytest.mark.parametrize("case", sorted(_BAD_FILES))
def test_a_wrong_key_or_shape_is_refused_with_one_message_naming_it(tmp_path, case):
    which, edit, message = _BAD_FILES[case]
    restoration, features = _released_files(tmp_path)
    bad = dict(restoration if which == "restoration" else features)
    edit(bad)
    torch.save(bad, tmp_path / "bad.pth")
    files = ((tmp_path / "bad.pth", tmp_path / "feature_extraction.pth") if which == "restoration"
             else (tmp_path / "network_mse.pth", tmp_path / "bad.pth"))
    with pytest.raises(InputError, match=message):
        load_authors_checkpoint(*files)


def test_unreadable_files_are_refused_with_one_message_naming_the_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_authors_checkpoint(tmp_path / "nothing.pth")
    (tmp_path / "truncated.pth").write_bytes(b"PK\x03\x04 not a whole file")
    with pytest.raises(InputError, match="truncated.pth cannot be read: it is truncated or not a torch file"):
        load_authors_checkpoint(tmp_path / "truncated.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(InputError, match="holds no state dict"):
        load_authors_checkpoint(tmp_path / "list.pth")


def test_the_fixture_files_are_the_ones_their_readme_lists():
    import hashlib
    import re
    listed = dict(re.findall(r"\| `([^`]+)` \| `([0-9a-f]{64})` \|", (FIXTURES / "README.md").read_text()))
    assert len(listed) == 3
    for name, digest in listed.items():
        assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == digest, name


def test_the_evaluation_entry_point_evaluates_the_authors_weights_in_rows_labelled_with_them(tmp_path, capsys):
    from rrsr_lib.evaluate import main
    _released_files(tmp_path)
    out = tmp_path / "rows.json"
    assert main(["--authors-weights", str(tmp_path / "network_mse.pth"), "--authors-features",
                 str(tmp_path / "feature_extraction.pth"), "--pairs", "1", "--window", "32", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    authors = [r for r in rows if r["checkpoint"] == "authors:network_mse.pth"]
    assert {r["metric"] for r in authors} == {"y_crop4", "y_crop0"} and len(authors) == 2
    assert all(r["model"] == "rrsr" and r["config"] == "paper" and r["reference"] == "pair-window" for r in authors)
    assert {r["checkpoint"] for r in rows} == {"bicubic", "authors:network_mse.pth"}
    assert "authors:network_mse.pth" in capsys.readouterr().out
    assert main(["--authors-features", str(tmp_path / "feature_extraction.pth"), "--out", str(out)]) == 2
    assert "--authors-features needs --authors-weights" in capsys.readouterr().err
