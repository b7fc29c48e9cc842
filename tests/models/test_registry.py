"""The one registry behind models, data sources, criteria and strategies; and the zoo registered in it."""

from __future__ import annotations

import copy
import pickle

import pytest

from autoprune.errors import UserError
from autoprune.models import create_model, list_models, model_family
from autoprune.models.registry import MODELS
from autoprune.registry import Entry, Registry


def _colours() -> Registry:
    colours: Registry = Registry("colour")

    @colours.register("red", "the warm one", warm=True)
    def red():
        return "#f00"

    @colours.register(help="the cold one", warm=False)
    def blue():
        return "#00f"

    return colours


def test_register_keeps_the_target_and_its_attributes():
    colours = _colours()
    red = colours.get("red")
    assert red.obj() == "#f00" and red.name == "red" and red.help == "the warm one"
    assert red.warm is True and colours.get("blue").warm is False
    assert red.extra == {"warm": True}


def test_the_name_defaults_to_the_targets_name_and_the_decorator_returns_it_unchanged():
    colours: Registry = Registry("colour")

    def green():
        return "#0f0"

    assert colours.register()(green) is green
    assert colours.names() == ["green"] and colours.get("green").obj is green and colours.get("green").help == ""


def test_names_are_sorted_and_describe_gives_the_help_in_that_order():
    colours = _colours()
    assert colours.names() == ["blue", "red"]
    assert list(colours.describe().items()) == [("blue", "the cold one"), ("red", "the warm one")]


def test_membership():
    colours = _colours()
    assert "red" in colours and "blue" in colours
    assert "green" not in colours and "Red" not in colours and None not in colours


def test_an_unknown_name_is_a_user_error_listing_the_choices():
    with pytest.raises(UserError) as err:
        _colours().get("green")
    assert str(err.value) == "unknown colour 'green' (choose from blue, red)"


def test_alternatives_end_the_list_of_choices():
    colours: Registry = Registry("colour", alternatives="or give #rrggbb")
    colours.register("red")(lambda: None)
    with pytest.raises(UserError) as err:
        colours.get("green")
    assert str(err.value) == "unknown colour 'green' (choose from red, or give #rrggbb)"


def test_registering_a_name_again_replaces_it():
    colours = _colours()
    colours.register("red", "redder", warm=False)(lambda: "#e00")
    assert colours.get("red").help == "redder" and colours.get("red").warm is False and colours.names() == ["blue", "red"]


def test_an_attribute_never_registered_is_an_attribute_error():
    red = _colours().get("red")
    with pytest.raises(AttributeError, match="'red' has no attribute 'cold'"):
        red.cold  # noqa: B018
    assert not hasattr(red, "cold")


def test_entries_copy_and_pickle():
    entry = Entry("e", len, "a builtin", {"size": 3})
    assert copy.deepcopy(entry) == entry and copy.deepcopy(entry).size == 3
    assert pickle.loads(pickle.dumps(entry)).size == 3


# --- the zoo ----------------------------------------------------------------------------------


def test_the_zoo_is_registered_with_its_families():
    assert list_models() == MODELS.names() == ["mobilenet_v2", "mobilenet_v2_imagenet", "resnet18_imagenet",
                                               "resnet20", "resnet32", "resnet56", "vgg11_bn", "vgg16_bn"]
    assert {name: MODELS.get(name).family for name in MODELS.names()} == {
        "mobilenet_v2": "mobilenet", "mobilenet_v2_imagenet": "mobilenet", "resnet18_imagenet": "resnet",
        "resnet20": "resnet", "resnet32": "resnet", "resnet56": "resnet", "vgg11_bn": "vgg", "vgg16_bn": "vgg"}
    assert model_family("vgg11_bn") == "vgg"


def test_an_unknown_zoo_model_lists_the_zoo_and_the_factory_specs():
    with pytest.raises(UserError) as err:
        create_model("resnet18", in_channels=3, num_classes=10)
    assert str(err.value) == ("unknown model 'resnet18' (choose from mobilenet_v2, mobilenet_v2_imagenet, "
                              "resnet18_imagenet, resnet20, resnet32, resnet56, vgg11_bn, vgg16_bn, "
                              "or give package.module:factory / file.py:factory)")
    with pytest.raises(UserError, match="unknown model 'resnet18'"):
        model_family("resnet18")
