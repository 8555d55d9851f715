"""The run config is validated once at the edge; bad values name their key."""

import pytest

from sgstudy.config import RunConfig
from sgstudy.errors import ConfigError
from sgstudy.metric_names import (
    all_group_keys,
    all_recall_keys,
    display_name,
    stored_name,
)


def test_flat_round_trip_keeps_every_value():
    config = RunConfig.from_flat(
        {
            "align": True,
            "mask_ratio": 0.2,
            "align_weight": 50,
            "seed": 3,
            "lr_steps": "3,5",
            "epochs": 6,
        }
    )
    assert config.model.align.enabled and config.model.align.mask_ratio == 0.2
    assert config.model.align.weight == 50.0 and config.optim.lr_steps == (3, 5)
    assert RunConfig.from_flat(config.to_params()) == config


def test_params_strings_from_mlflow_read_back():
    params = {k: str(v) for k, v in RunConfig().to_params().items() if v is not None}
    assert RunConfig.from_flat(params) == RunConfig()


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("mask_ratio", 1.0, "mask_ratio (p)"),
        ("mask_ratio", -0.1, "mask_ratio (p)"),
        ("align_weight", -1, "align_weight (λ)"),
        ("model", "vgg", "unknown model 'vgg'"),
        ("protocol", "detect", "unknown protocol"),
        ("preset", "huge", "unknown preset"),
        ("epochs", 0, "epochs must be >= 1"),
        ("align", "maybe", "align must be a boolean"),
        ("bogus_key", 1, "unknown config key(s): bogus_key"),
        ("seed", "x", "bad config value"),
    ],
)
def test_bad_values_name_the_key(key, value, needle):
    with pytest.raises(ConfigError, match=None) as info:
        RunConfig.from_flat({key: value})
    assert needle in str(info.value)


def test_metric_names_render_and_parse_back():
    assert display_name("mR_50") == "mR@50"
    assert display_name("ng_mR_100") == "ng-mR@100"
    assert display_name("tail_mR_100") == "tail mR@100"
    assert display_name("loss_rel") == "loss_rel"
    for key in all_recall_keys() + all_group_keys():
        assert "@" not in key
        assert stored_name(display_name(key)) == key
    assert len(all_recall_keys()) == 18 and len(all_group_keys()) == 9
