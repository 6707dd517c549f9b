"""A minimal RefSR network for fast tests of training code (not a model of the paper).

Call ``model(lr, ref) -> sr`` like every model of the library: (B,3,h,w), (B,3,Hr,Wr) -> (B,3,4h,4w).
SR = bilinear x4 of LR + a two-layer conv of (that upsampling, the reference resized to the output).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn


class ToyRefSR(nn.Module):
    def __init__(self, channels: int = 8):
        super().__init__()
        self.head = nn.Conv2d(6, channels, 3, padding=1)
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, lr, ref):
        up = F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)
        r = F.interpolate(ref, size=up.shape[-2:], mode="bilinear", align_corners=False)
        return up + self.tail(F.leaky_relu(self.head(torch.cat([up, r], 1)), 0.1))


@pytest.fixture(autouse=True)
def one_thread():
    """Run a test on one CPU thread (import this fixture into a test module to use it there).

    Training steps of small networks gain little from a second thread, and on a 2-core machine shared with
    other work two threads mostly wait for each other (measured: 3x slower under load).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
