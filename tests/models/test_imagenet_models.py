"""The ImageNet-sized zoo models: shapes, the papers' MACs and params, and the family spaces that apply."""

import pytest
import torch

from autoprune.measure.count import count_cost
from autoprune.models import create_model, list_models, model_family
from autoprune.pruning.config import load_space_config
from autoprune.pruning.space import PruningSpace

pytestmark = pytest.mark.usefixtures("one_thread")

# name: (family, MACs, params) at 3x224x224 and 1000 classes: He et al. 2016 and Sandler et al. 2018
PAPER = {
    "resnet18_imagenet": ("resnet", 1.82e9, 11.69e6),
    "mobilenet_v2_imagenet": ("mobilenet", 300e6, 3.50e6),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_registered_in_its_family(name):
    assert name in list_models()
    assert model_family(name) == PAPER[name][0]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_imagenet_input_gives_imagenet_logits_and_the_papers_cost(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_classes=1000).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()
    cost = count_cost(model, x)
    _, macs, params = PAPER[name]
    assert cost.macs == pytest.approx(macs, rel=0.01)
    assert cost.params == pytest.approx(params, rel=0.01)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_downsamples_32x_to_the_last_feature_map(name):
    model = create_model(name, in_channels=3, num_classes=1000).eval()
    last = model.layer4 if name.startswith("resnet") else model.features
    seen = {}

    def keep_shape(module, args, out):
        seen["shape"] = tuple(out.shape)

    last.register_forward_hook(keep_shape)
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert seen["shape"] == (1, 512 if name.startswith("resnet") else 1280, 7, 7)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_adapts_to_channels_and_classes(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=7).eval()
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    model = create_model(name, in_channels=4, num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 4, 96, 80))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_resnet18_groups_follow_the_resnet_space():
    torch.manual_seed(0)
    model = create_model("resnet18_imagenet", in_channels=3, num_classes=10)
    space = PruningSpace(model, torch.randn(1, 3, 64, 64), load_space_config(None, "resnet"))
    highs = {g.name: (g.channels, g.high) for g in space.groups}
    # The residual streams (named after the stem and each projection shortcut) are capped at 0.5 by
    # resnet.yaml's overrides; each block's inner conv is its own group, at the space's 0.7.
    streams = {"conv1": 64, "layer2.0.shortcut.0": 128, "layer3.0.shortcut.0": 256, "layer4.0.shortcut.0": 512}
    inner = {f"layer{s}.{b}.conv1": w for s, w in zip((1, 2, 3, 4), (64, 128, 256, 512)) for b in (0, 1)}
    assert highs == {**{n: (c, 0.5) for n, c in streams.items()}, **{n: (c, 0.7) for n, c in inner.items()}}


def test_mobilenet_v2_groups_follow_the_mobilenet_space():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2_imagenet", in_channels=3, num_classes=10)
    space = PruningSpace(model, torch.randn(1, 3, 64, 64), load_space_config(None, "mobilenet"))
    groups = {g.name: g for g in space.groups}
    assert len(groups) == 25
    assert groups["features.20"].channels == 1280  # the last 1x1 conv
    assert groups["features.19.conv.3"].channels == 960  # the last block's depthwise conv: 160 x 6
    assert all(g.step == 8 and g.high == 0.6 for g in groups.values())
