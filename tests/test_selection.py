"""Tests of rrsr_lib.selection: CondConv mixing, one expert = a plain convolution, the channel gate, and
the pool that ignores zero padding."""
import pytest
import torch
import torch.nn.functional as F

from rrsr_lib.errors import InputError
from rrsr_lib.selection import CondConv2d, PlainHead, SelectionBlock, masked_global_average_pool


def test_one_expert_is_a_plain_convolution():
    torch.manual_seed(0)
    conv = CondConv2d(6, 5, experts=1)
    x = torch.randn(3, 6, 7, 8)
    pooled = torch.randn(3, 6)
    y, r = conv(x, pooled)
    assert r.shape == (3, 1)
    # with one expert, sample b is convolved with the expert's kernel times its routing weight r_b
    for b in range(3):
        expected = F.conv2d(x[b:b + 1], r[b, 0] * conv.weight[0], r[b, 0] * conv.bias[0], padding=1)
        torch.testing.assert_close(y[b:b + 1], expected, rtol=1e-5, atol=1e-6)
    # and when the routing weight is 1, it is exactly nn.Conv2d with the expert's parameters
    with torch.no_grad():
        conv.routing.weight.zero_()
        conv.routing.bias.fill_(100.0)   # sigmoid(100) == 1.0 in float32
    plain = torch.nn.Conv2d(6, 5, 3, padding=1)
    with torch.no_grad():
        plain.weight.copy_(conv.weight[0])
        plain.bias.copy_(conv.bias[0])
    torch.testing.assert_close(conv(x, pooled)[0], plain(x), rtol=1e-5, atol=1e-6)


def test_experts_are_mixed_per_sample():
    torch.manual_seed(1)
    conv = CondConv2d(4, 3, experts=5)
    x = torch.randn(2, 4, 6, 6)
    pooled = x.mean(dim=(2, 3))
    y, r = conv(x, pooled)
    # naive: r = sigmoid(Linear(pool)), kernel_b = sum_e r_be W_e, one convolution per sample
    r_naive = torch.sigmoid(pooled @ conv.routing.weight.T + conv.routing.bias)
    torch.testing.assert_close(r, r_naive)
    assert torch.all((r > 0) & (r < 1))
    for b in range(2):
        kernel = sum(r_naive[b, e] * conv.weight[e] for e in range(5))
        bias = sum(r_naive[b, e] * conv.bias[e] for e in range(5))
        torch.testing.assert_close(y[b:b + 1], F.conv2d(x[b:b + 1], kernel, bias, padding=1), rtol=1e-5, atol=1e-5)


def test_selection_block_is_condconv_times_gate():
    torch.manual_seed(2)
    block = SelectionBlock(lr_channels=4, ref_channels=6, out_channels=5, experts=3)
    lr, ref = torch.randn(2, 4, 5, 7), torch.rand(2, 6, 5, 7)
    out, info = block(lr, ref, return_gates=True)
    x = torch.cat((lr, ref), 1)
    p = x.mean(dim=(2, 3))
    y, _ = block.condconv(x, p)
    # s = sigmoid(conv1x1(ReLU(conv1x1(GAP))))
    hidden = F.relu(p @ block.gate.squeeze.weight[:, :, 0, 0].T + block.gate.squeeze.bias)
    s = torch.sigmoid(hidden @ block.gate.excite.weight[:, :, 0, 0].T + block.gate.excite.bias)
    torch.testing.assert_close(info["gate"], s)
    # the authors' RefAwareBlock returns output * x_se, with no activation after it
    torch.testing.assert_close(out, y * s[:, :, None, None])
    assert (out < 0).any()   # nothing clips or bends the negative part
    assert info["routing"].shape == (2, 3)


def test_the_legacy_block_adds_a_leaky_relu_after_the_gate_and_nothing_else():
    torch.manual_seed(2)
    block = SelectionBlock(lr_channels=4, ref_channels=6, out_channels=5, experts=3)
    legacy = SelectionBlock(lr_channels=4, ref_channels=6, out_channels=5, experts=3, activation="lrelu")
    legacy.load_state_dict(block.state_dict())
    lr, ref = torch.randn(2, 4, 5, 7), torch.rand(2, 6, 5, 7)
    torch.testing.assert_close(legacy(lr, ref), F.leaky_relu(block(lr, ref), 0.1))
    with pytest.raises(InputError, match="activation must be one of"):
        SelectionBlock(4, 6, 5, 3, activation="relu")


def test_one_expert_block_is_plain_conv_with_gate():
    torch.manual_seed(3)
    block = SelectionBlock(lr_channels=4, ref_channels=4, out_channels=3, experts=1)
    lr, ref = torch.randn(1, 4, 6, 6), torch.rand(1, 4, 6, 6)
    out, info = block(lr, ref, return_gates=True)
    r = info["routing"][0, 0]
    y = F.conv2d(torch.cat((lr, ref), 1), r * block.condconv.weight[0], r * block.condconv.bias[0], padding=1)
    torch.testing.assert_close(out, y * info["gate"][:, :, None, None], rtol=1e-5, atol=1e-6)


def test_zero_padding_does_not_change_the_output_with_valid_size():
    torch.manual_seed(4)
    block = SelectionBlock(lr_channels=4, ref_channels=8, out_channels=6, experts=4)
    lr, ref = torch.randn(2, 4, 5, 7), torch.rand(2, 8, 5, 7)
    out = block(lr, ref)
    # the authors pad at the bottom and the right with zeros
    lr_p, ref_p = F.pad(lr, (0, 4, 0, 3)), F.pad(ref, (0, 4, 0, 3))
    out_valid = block(lr_p, ref_p, valid=(5, 7))
    torch.testing.assert_close(out_valid[..., :5, :7], out, rtol=1e-5, atol=1e-6)
    mask = torch.zeros(2, 1, 8, 11)
    mask[..., :5, :7] = 1
    torch.testing.assert_close(block(lr_p, ref_p, valid=mask), out_valid)
    # without the valid size the pool sees the zeros and the routing changes
    out_all = block(lr_p, ref_p)
    assert (out_all[..., :5, :7] - out).abs().max() > 1e-4


def test_masked_pool_and_errors():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    torch.testing.assert_close(masked_global_average_pool(x, (2, 3)), x[:, :, :2, :3].mean(dim=(2, 3)))
    torch.testing.assert_close(masked_global_average_pool(x), x.mean(dim=(2, 3)))
    with pytest.raises(InputError, match="valid size"):
        masked_global_average_pool(x, (5, 5))
    with pytest.raises(InputError, match="mask"):
        masked_global_average_pool(x, torch.ones(2, 1, 3, 5))
    with pytest.raises(InputError, match="channels"):
        SelectionBlock(4, 8, 6)(torch.zeros(1, 4, 3, 3), torch.zeros(1, 7, 3, 3))
    with pytest.raises(InputError, match="experts"):
        CondConv2d(4, 4, experts=0)


def test_paper_block_parameter_count():
    # x1 block: Cin = 64 + 256 = 320 -> 64, 16 experts: experts 16*64*320*9 + biases 16*64,
    # routing 320*16 + 16, gate 320*320 + 320 and 320*64 + 64
    block = SelectionBlock(64, 256, 64, experts=16)
    n = sum(p.numel() for p in block.parameters())
    assert n == 16 * 64 * 320 * 9 + 16 * 64 + 320 * 16 + 16 + 320 * 320 + 320 + 320 * 64 + 64


def test_plain_head_ablation():
    head = PlainHead(4, 6, 5)
    out = head(torch.randn(2, 4, 5, 5), torch.rand(2, 6, 5, 5), valid=(3, 3))
    assert out.shape == (2, 5, 5, 5)
