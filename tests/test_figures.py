"""zoo.results.style: a colour per depth, dashed plain / solid residual, a save that writes."""

from __future__ import annotations

from zoo.results.style import depth_of, family_of, plt, save, style_for


def test_depth_decides_colour_and_skip_decides_line():
    assert style_for("plain56")["color"] == style_for("resnet56")["color"]
    assert style_for("plain56")["linestyle"] == "--"
    assert style_for("resnet56")["linestyle"] == "-"
    depths = ["resnet8", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202"]
    assert len({style_for(name)["color"] for name in depths}) == len(depths)


def test_densenets_have_colours_of_their_own():
    resnet_colours = {style_for(f"resnet{d}")["color"] for d in (8, 20, 32, 44, 56, 110, 1202)}
    assert style_for("densenet40_12")["color"] not in resnet_colours
    assert style_for("densenet_bc_100_12")["color"] != style_for("densenet40_12")["color"]
    assert family_of("densenet_bc_100_12") == "dense" and depth_of("densenet_bc_100_12") == 100


def test_unknown_depth_gets_a_stable_colour():
    # the same colour in every process (hash() of a str changes with PYTHONHASHSEED), and
    # different unknown depths do not all fall on one colour
    import os
    import subprocess
    import sys

    code = "from zoo.results.style import style_for; print(style_for('resnet77')['color'])"
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
            for seed in ("1", "2", "3")}
    assert seen == {style_for("resnet77")["color"]}
    assert len({style_for(f"resnet{6 * n + 2}")["color"] for n in range(12, 40)}) >= 4
    assert family_of("preact_resnet1001") == "residual" and depth_of("preact_resnet1001") == 1001


def test_pre_activation_nets_share_the_depth_colour_but_not_the_line():
    assert style_for("preact_resnet110")["color"] == style_for("resnet110")["color"]
    assert style_for("preact_resnet110")["linestyle"] == "-."
    assert style_for("resnet110")["linestyle"] == "-"


def test_save_writes_png_and_closes(tmp_path):
    figure, axis = plt.subplots()
    axis.plot([0, 1], [1, 0], **style_for("plain20"))
    path = save(figure, tmp_path / "sub" / "line.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert not plt.fignum_exists(figure.number)
