"""Config composition and validation through the compose API (no CLI)."""

import pytest

from gxnor_cli.config import Config, ConfigError, flatten, from_dict, load_config


def test_defaults_compose_into_typed_config():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert (cfg.data.name, cfg.quant.weight_states, cfg.quant.act_states, cfg.dst.rule) == ("digits", 3, 3, "adam")


@pytest.mark.parametrize("overrides, check", [
    (["quant=bnn"], lambda c: (c.quant.weight_states, c.quant.act_states) == (2, 2)),
    (["quant=twn"], lambda c: (c.quant.weight_states, c.quant.act_states) == (3, None)),
    (["quant=multilevel"], lambda c: c.quant.weight_states == 5),
    (["quant=float"], lambda c: c.quant.weight_states is None),
    (["quant.weight_states=null"], lambda c: c.quant.weight_states is None),
    (["dst=sgd"], lambda c: c.dst.rule == "sgd" and c.optim.lr == 20.0 and c.optim.lr_end == 0.2),
    (["dst=sgd", "optim.lr=5"], lambda c: c.optim.lr == 5.0 and c.optim.lr_end == 0.05),
    (["optim=paper_mnist", "dst=rms"], lambda c: c.optim.lr == 0.1 and c.optim.lr_end == 1e-7),
    (["dst=rms", "optim.lr=0.2"], lambda c: c.dst.rule == "rms" and c.optim.lr == 0.2),
    (["model=mnist_net"], lambda c: c.model.arch == "32C5-MP2-64C5-MP2-512FC-10" and c.model.padding == 0),
    (["model=cifar_net", "data=cifar10"], lambda c: c.model.arch.startswith("2x128C3") and c.data.augment),
    (["quant.window=0.7", "quant.pulse=tri"], lambda c: c.quant.window == 0.7 and c.quant.pulse == "tri"),
    (["dst=mom8"], lambda c: c.dst.rule == "mom8" and c.optim.lr == 0.01 and c.dst.mom8_range == 1.0),
    # window and pulse width default to half a step of the activation space, dz / 2 (binary: r = 0)
    ([], lambda c: (c.quant.window, c.quant.pulse_width) == (0.5, 0.5)),
    (["quant.act_states=5"], lambda c: (c.quant.window, c.quant.pulse_width) == (0.25, 0.25)),
    (["quant.act_states=17"], lambda c: (c.quant.window, c.quant.pulse_width) == (0.0625, 0.0625)),
    (["quant.act_states=2"], lambda c: (c.quant.window, c.quant.pulse_width) == (0.0, 1.0)),
    (["quant=float"], lambda c: (c.quant.window, c.quant.pulse_width) == (None, None)),
    (["quant.act_states=9", "quant.window=0.3"], lambda c: (c.quant.window, c.quant.pulse_width) == (0.3, 0.125)),
    (["quant.act_states=9", "quant.window=null"], lambda c: c.quant.window == 0.125),
    # an experiment picks options and sets keys across sections ...
    (["experiment=fashion_gxnor"], lambda c: (c.data.name, c.model.padding, c.trainer.batch_size, c.dst.beta1,
                                              c.trainer.epochs) == ("fashion_mnist", 0, 256, 0.99, 20)),
    # ... a group chosen beside it keeps the experiment's keys, and command-line keys win in any order
    (["experiment=fashion_gxnor", "dst=mom8"], lambda c: c.dst.rule == "mom8" and c.dst.beta1 == 0.99),
    (["trainer.batch_size=64", "experiment=fashion_gxnor"], lambda c: c.trainer.batch_size == 64),
    (["experiment=fashion_gxnor", "data=digits"], lambda c: c.data.name == "digits" and c.dst.beta1 == 0.99),
    # an experiment built on another keeps its keys and adds its own
    (["experiment=fashion_hysteresis"], lambda c: (c.data.name, c.dst.rule, c.dst.beta1, c.dst.transition,
                                                   c.optim.lr) == ("fashion_mnist", "mom8", 0.99, "hysteresis", 0.3)),
    (["experiment=fashion_hysteresis", "dst=adam"], lambda c: (c.dst.rule, c.dst.transition) == ("adam", "hysteresis")),
])
def test_groups_and_keys(overrides, check):
    assert check(load_config(overrides))


@pytest.mark.parametrize("override, message", [
    ("quant.foo=1", "unknown config key 'quant.foo'"),
    ("nothing.here=1", "unknown config key"),
    ("quant.weight_states=4", "2, 3, 5, 9"),
    ("quant.act_states=6", "2, 3, 5, 9"),
    ("quant.window=-0.5", "quant.window must be >= 0"),
    ("quant.pulse_width=0", "quant.pulse_width must be > 0"),
    ("quant.pulse=gauss", "quant.pulse must be one of rect, tri"),
    ("quant.window=abc", "quant.window"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.device=tpu", "trainer.device"),
    ("dst.rule=lion", "dst.rule"),
    ("dst.m=0", "dst.m"),
    ("data=imagenet", "unknown data option 'imagenet'"),
    ("quant=ternaryish", "available: bnn, float, gxnor, multilevel, twn"),
    ("experiment=mnist_best", "unknown experiment option 'mnist_best'; available: fashion_gxnor, fashion_hysteresis"),
    ("dst.mom8_range=0", "dst.mom8_range must be > 0"),
    ("optim.bn_lr=1e38", "optim.bn_lr must be in (0, 10000]"),
    ("optim.lr_end=1", "must not exceed optim.lr"),
    ("dst.beta2=2", "dst.beta2 must be in [0, 1)"),
    ("+quant.extra=1", "adding or deleting keys is not allowed"),
    ("++trainer.epochs=3", "adding or deleting keys is not allowed"),
    ("~quant.window", "adding or deleting keys is not allowed"),
    ("quant.weight_states=2,3", "use `gxnor sweep`"),
    ("quant.window=[0.1", "cannot parse override"),
])
def test_bad_overrides_raise_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        load_config([override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_dst_key_the_rule_does_not_read_is_refused():
    with pytest.raises(ConfigError, match="dst.beta1 has no effect with dst.rule=sgd"):
        load_config(["dst=sgd", "dst.beta1=0.99"])
    assert load_config(["dst=mom8", "dst.beta1=0.99"]).dst.beta1 == 0.99


def test_flatten_and_round_trip():
    cfg = load_config(["quant.window=0.3"])
    flat = flatten(cfg)
    assert flat["quant.window"] == 0.3 and flat["trainer.epochs"] == cfg.trainer.epochs
    assert from_dict(cfg.to_dict()) == cfg


def test_own_config_dir(tmp_path):
    from gxnor_cli.config import default_config_dir
    import shutil

    mine = tmp_path / "conf"
    shutil.copytree(default_config_dir(), mine)
    (mine / "quant" / "mine.yaml").write_text("weight_states: 9\nact_states: 5\nwindow: 0.2\n")
    cfg = load_config(["quant=mine"], config_dir=mine)
    assert (cfg.quant.weight_states, cfg.quant.act_states, cfg.quant.window) == (9, 5, 0.2)
    (mine / "quant" / "broken.yaml").write_text("weight_states: 7\n")
    with pytest.raises(ConfigError, match="weight_states"):
        load_config(["quant=broken"], config_dir=mine)
    (mine / "quant" / "extra.yaml").write_text("weight_states: 3\nsurprise: 1\n")
    with pytest.raises(ConfigError, match="surprise"):
        load_config(["quant=extra"], config_dir=mine)
