"""zoo.describe: a network says what it is (skip, family, depth, paper, input, activation) from
the registry, and figures, lesion and catalogue ask it instead of reading names."""

from __future__ import annotations

import pytest

import zoo
from zoo.models.common import SkipBlock
from zoo.results.style import family_of, pre_activation, style_for

KEYS = {"name", "family", "skip", "default_num_classes", "depth", "paper", "input_size",
        "relu_after_addition"}


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_registered_name_is_described_in_one_vocabulary(name):
    facts = zoo.describe(name)
    assert set(facts) == KEYS
    assert facts["skip"] in ("add", "concat", "none")
    assert isinstance(facts["depth"], int) and facts["depth"] > 0
    assert facts["input_size"] in (32, 224) and facts["paper"]
    # no addition in a DenseNet; every other block (plain twins too) says where its ReLU sits
    expected = (None,) if facts["skip"] == "concat" else (True, False)
    assert facts["relu_after_addition"] in expected


def test_the_facts_that_names_used_to_be_parsed_for():
    assert zoo.describe("preact_plain110")["skip"] == "none"
    assert family_of("preact_plain110") == "plain"  # a name prefix said "residual"
    assert pre_activation("preact_plain110") and not pre_activation("plain110")
    assert style_for("preact_plain110")["linestyle"] == "-."  # apart from plain110's "--"
    assert zoo.describe("vit_mini_p7_d12")["depth"] == 12  # blocks, not the patch size 7
    assert zoo.describe("densenet_bc_64_12")["depth"] == 64  # any BC depth 6n+4 resolves
    assert zoo.describe("densenet121")["input_size"] == 224
    assert zoo.describe("densenet40_12")["input_size"] == 32
    assert [zoo.describe(n)["relu_after_addition"] for n in
            ("resnet20", "resnet50", "preact_resnet110", "vit_tiny_p4_d8", "densenet40_12")] == [
        True, True, False, False, None]


def test_a_network_built_by_create_describes_itself():
    net = zoo.create("preact_resnet110")
    assert zoo.describe(net) == zoo.describe("preact_resnet110")
    blocks = [m for m in net.modules() if isinstance(m, SkipBlock)]
    assert blocks and not any(b.relu_after_addition for b in blocks)  # what lesion reads
    assert "zoo_name" not in str(list(net.state_dict())[:3])
    with pytest.raises(TypeError, match="registry name"):
        zoo.describe(object())
