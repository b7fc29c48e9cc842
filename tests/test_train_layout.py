"""Training runs the convolutions that oneDNN cannot train in channels_last in NCHW instead."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.data.bundle import DataBundle, Split
from autoprune.train import _nchw_where_onednn_fails, train


def test_a_training_step_on_a_strided_1x1_convolution_matches_float64():
    # oneDNN's channels_last weight gradient for this convolution is off by about its own size on AVX2,
    # and the same fault (a workspace overrun, oneDNN issue 6035) hangs or crashes the kernel
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 14, 1, stride=2),
                        nn.Flatten(), nn.Linear(14 * 14 * 14, 4))
    split = Split(torch.rand(64, 1, 28, 28), torch.randint(0, 4, (64,)))
    reference = copy.deepcopy(net).double()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert train(net, DataBundle("noise", split, split, split, 4), epochs=1, batch_size=64, quiet=True).steps == 1
    finally:
        torch.set_num_threads(threads)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    F.cross_entropy(reference(split.x.double()), split.y).backward()
    optimizer.step()
    for (name, got), want in zip(net.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5, msg=name)


def test_only_strided_1x1_convolutions_on_few_channels_change_layout():
    net = nn.Sequential(nn.Conv2d(5, 14, 1, stride=2), nn.Conv2d(14, 14, 1), nn.Conv2d(14, 16, 3, stride=2),
                        nn.Conv2d(16, 8, 1, stride=2), nn.Conv2d(8, 15, 1, stride=2))
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(2, 5, 32, 32).contiguous(memory_format=torch.channels_last)
    expected = net(x)
    before = [(m.weight.detach().clone(), m.weight.stride()) for m in net]
    hooks = _nchw_where_onednn_fails(net, "cpu")
    assert len(hooks) == 2
    seen = []
    net[4].register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous()))
    torch.testing.assert_close(net(x), expected)
    assert seen == [True]  # the hook hands the convolution an NCHW input
    for i, (m, (weight, stride)) in enumerate(zip(net, before)):
        torch.testing.assert_close(m.weight, weight)
        if i in (0, 4):  # 1x1, stride 2, 5 and 8 input channels
            assert m.weight.is_contiguous() and m.weight.stride() != stride
        else:
            assert m.weight.stride() == stride


def test_epochs_of_steps_trains_exactly_that_many_steps():
    # an epoch of 1000 images in batches of 128 is 8 steps (the last of 104 images): 4 steps are 0.5 epoch, not
    # 4 * 128 / 1000 = 0.512, which trains 5
    from autoprune.train import epochs_of_steps

    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    for images, batch, steps in ((1000, 128, 4), (1000, 128, 8), (1000, 128, 13), (55000, 128, 100), (300, 64, 3),
                                 (300, 64, 7), (7 * 64, 64, 29)):  # 29 / 7 * 7 is 29.000000000000004
        split = Split(torch.rand(images, 1, 2, 2), torch.randint(0, 3, (images,)))
        epochs = epochs_of_steps(steps, images, batch)
        done = train(net, DataBundle("noise", split, split, split, 3), epochs=epochs, batch_size=batch, quiet=True)
        assert done.steps == steps, (images, batch, steps)
