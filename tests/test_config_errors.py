"""Config errors in one line, with the closest valid names (issue 24 "crashes and unclear
messages", issue 25 item 7), and Hydra callbacks the zoo does not expect refused (issue 24,
"ways in for code")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST_OVERRIDES, REPO, run_train
from omegaconf import OmegaConf

from zoo.config.source import check_hydra_callbacks, config_error_line, internal_choice


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
        result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("value", ["0", ""])
def test_hydra_full_error_other_than_1_keeps_the_one_line(tmp_path, value):
    line = one_line(run_train(tmp_path / "run", "data=cifar11", check=False,
                              env={"HYDRA_FULL_ERROR": value}))
    assert "did you mean cifar10 or cifar100?" in line and "_schema" not in line


def test_a_misspelled_key_suggests_the_closest_keys(compose):
    with pytest.raises(Exception) as caught:  # noqa: PT011 - Hydra's ConfigCompositionException
        compose("trainer.max_epoch=1")
    line = config_error_line(caught.value)
    assert line.startswith("trainer.max_epoch: no such setting; did you mean max_epochs")
    assert "trainer has: " in line and "\n" not in line


def test_a_misspelled_choice_suggests_the_closest_and_hides_the_schemas(compose):
    for override, closest in (("data=cifar11", "cifar10"), ("model=resnt20", "resnet20"),
                              ("model=densenet40-12", "densenet40_12")):
        with pytest.raises(Exception) as caught:  # noqa: PT011 - MissingConfigException
            compose(override)
        line = config_error_line(caught.value)
        assert f"did you mean {closest}" in line and "_schema" not in line, line


def test_a_schema_picked_as_a_config_is_one_line(tmp_path):
    assert "data=_schema: names that start with _ are the zoo's config schemas" in \
        internal_choice(["data=_schema"])
    assert internal_choice(["-m", "model=resnet8,_cifar_resnet_schema"]).startswith("model=_cifar")
    assert internal_choice(["run_name=_mine", "data=digits", "+x=_schema"]) is None
    assert "configs/data/" in one_line(run_train(tmp_path / "run", "data=_schema", check=False))


def test_a_foreign_hydra_callback_is_refused_and_never_runs(tmp_path):
    stolen = tmp_path / "stolen"
    experiment = tmp_path / "configs" / "experiment"
    experiment.mkdir(parents=True)
    (experiment / "evil.yaml").write_text(
        "# @package _global_\nhydra:\n  callbacks:\n    copy:\n      _target_: shutil.copyfile\n"
        f"      src: {Path(__file__)}\n      dst: {stolen}\n")
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--config-dir",
                             str(tmp_path / "configs"), "experiment=evil", *FAST_OVERRIDES,
                             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, check=False)
    assert "hydra.callbacks.copy._target_=shutil.copyfile" in one_line(result)
    assert not stolen.exists()


def test_only_the_zoos_own_and_hydras_callbacks_pass():
    def config(**callbacks):
        return OmegaConf.create({"hydra": {"callbacks": callbacks}})

    check_hydra_callbacks(config(
        run_directory={"_target_": "zoo.runs.directory.RunDirectoryCheck"}))
    check_hydra_callbacks(config(log={
        "_target_": "hydra.experimental.callbacks.LogJobReturnCallback"}))
    for refused in ({"_target_": "os.system", "command": "true"},
                    {"_target_": "hydra.utils.call", "path": "os.system"},
                    {"_target_": "zoo.runs.directory.RunDirectoryCheck",
                     "inner": {"_target_": "os.system", "command": "true"}},
                    {"no_target": 1}):
        with pytest.raises(ValueError, match="the zoo runs only its own Hydra callback"):
            check_hydra_callbacks(config(x=refused))
