"""The shipped configs: every setting of the core is overridable from flags.

``--config.section.key=value`` only works for keys the config file defines
(ml_collections refuses new keys), so a dataclass field missing from a
config file is a setting users cannot reach from the command line.
"""

import dataclasses
import importlib
import pathlib

import pytest

from base import compare, methods, train, transfer
from base.meta import MetaOptConfig

CONFIG_NAMES = sorted(p.stem for p in
                      (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                      if not p.stem.startswith("_"))
SECTIONS = {"adapt": train.AdaptConfig, "meta": MetaOptConfig,
            "train": train.TrainConfig, "temperature": train.TemperatureConfig,
            "prior": train.PriorConfig, "evaluate": train.EvaluateConfig,
            "compare": compare.CompareConfig,
            "transfer": transfer.TransferConfig}
SECTIONS.update({name: methods.get_method(name).config_class
                 for name in ("maml", "metanas", "warm_start", "atnas",
                              "metad2a")})


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_core_setting_is_in_every_config(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  for section, cls in SECTIONS.items():
    if section not in config:
      continue
    missing = sorted({f.name for f in dataclasses.fields(cls)}
                     - set(config[section].keys()))
    assert not missing, (f"configs/{name}.py lacks {section}."
                         f"{', '.join(missing)}: not settable by flag")


def test_all_configs_are_checked():
  assert {"quickstart", "omniglot", "cifar10"} <= set(CONFIG_NAMES)
