"""The demos' shared warm start pieces and the assets cache key (temper/demos), by hand."""

from temper.configs.schema import DemoConfig
from temper.demos.assets import demo_key
from temper.demos.warm_start import batch


def test_batch_pads_right_and_trains_only_the_masked_tokens():
    ids_BT, target_BT = batch([([1, 2, 3], [0, 1, 1]), ([4, 5], [0, 1])], pad_id=0)
    assert ids_BT.tolist() == [[1, 2, 3], [4, 5, 0]]
    assert target_BT.tolist() == [[-100, 2, 3], [-100, 5, -100]]


def test_tool_demo_mask_skips_the_glue_between_turns():
    _, target_BT = batch([([7, 8, 9, 10], [0, 1, 0, 1])], pad_id=0)
    assert target_BT.tolist() == [[-100, 8, -100, 10]]


def test_cache_key_covers_every_setting_but_the_folder():
    base = DemoConfig(enabled=True)
    assert demo_key(base) == demo_key(base.model_copy(update={"cache_dir": "/elsewhere"}))
    for change in ({"task": "calculator"}, {"seed": 1}, {"sft_target_accuracy": 0.4}, {"n_train": 99}):
        assert demo_key(base) != demo_key(base.model_copy(update=change)), change
