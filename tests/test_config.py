"""RunConfig validation, JSON round trips, and the experiment declarations (one source of truth)."""
import dataclasses
import json
import math

import pytest

from bigbatch.config import ConfigError, RunConfig, parse_set
from bigbatch.experiments import (
    EXPERIMENTS,
    PAPER_BATCH_SIZES,
    PAPER_TABLE,
    RECIPES,
    load_config,
    load_experiment,
)


def test_defaults_are_the_papers_baseline():
    cfg = RunConfig()
    assert (cfg.batch_size, cfg.epochs, cfg.lr, cfg.momentum, cfg.norm) == (32, 100, 0.01, 0.0, "none")
    assert (cfg.val_size, cfg.split_seed, cfg.schedule) == (10000, 42, "constant")
    # the text is silent: the authors' code's values
    assert (cfg.drop_last, cfg.bn_momentum, cfg.weight_decay, cfg.precision) == (False, 0.99, 1e-6, "fp32")


def test_json_round_trip(tmp_path):
    cfg = RunConfig(batch_size=256, milestones=(10, 20), norm="ghost", lr=0.02)
    path = tmp_path / "run.json"
    cfg.to_json(path)
    assert RunConfig.from_json(path) == cfg
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_ints_accepted_where_floats_expected():
    assert RunConfig.from_dict({"lr": 1}).lr == 1.0
    assert isinstance(RunConfig.from_dict({"lr": 1}).lr, float)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"batch_sise": 64}, "unknown config key 'batch_sise' (did you mean 'batch_size'?)"),
        ({"bogus": 1}, "valid keys: experiment, recipe, dataset"),
        ({"batch_size": "64"}, "batch_size must be int, got str"),
        ({"batch_size": 64.0}, "batch_size must be int"),
        ({"batch_size": True}, "batch_size must be int"),
        ({"augment_val": 1}, "augment_val must be bool"),
        ({"lr": "fast"}, "lr must be float"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"epochs": -1}, "epochs must be a positive integer"),
        ({"lr": 0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"factor_lr": 0}, "factor_lr must be a positive number"),
        ({"factor_lr": -2}, "factor_lr must be a positive number"),
        ({"momentum": -0.1}, "momentum must be a non-negative number"),
        ({"hflip_p": 1.5}, "hflip_p must lie in [0, 1]"),
        ({"dataset": "imagenet"}, "dataset='imagenet' is not one of: cifar10, cifar100, fashion-mnist, synthetic"),
        ({"norm": "layer"}, "norm='layer' is not one of"),
        ({"schedule": "cosine"}, "schedule='cosine' is not one of"),
        ({"norm": "ghost", "batch_size": 16, "virtual_batch_size": 32}, "virtual_batch_size=32 is larger than batch_size=16"),
        ({"schedule": "warmup_step", "epochs": 5, "warmup_epochs": 5}, "warmup_epochs=5 is not shorter than training (5 epochs)"),
        ({"schedule": "warmup_step", "milestones": [60, 30]}, "milestones must be strictly increasing"),
        ({"milestones": "30,60"}, "milestones must be a list of int"),
        ({"device": "tpu"}, "device='tpu' is not one of"),
        ({"precision": "auto"}, "precision='auto' is not one of: fp32, bf16"),
        ({"translate_frac": 0.7}, "translate_frac must lie in [0, 0.5)"),
    ],
)
def test_bad_values_are_refused_with_one_line(override, fragment):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(override)
    msg = str(err.value)
    assert fragment in msg
    assert "\n" not in msg


def test_warmup_checked_against_scaled_epochs():
    # 5 epochs at base batch size, scaled linearly to 10 at bs 64: 5 warmup epochs then fit.
    RunConfig.from_dict({"schedule": "warmup_step", "epochs": 5, "warmup_epochs": 5,
                         "epochs_scaling": "linear", "batch_size": 64, "milestones": [8]})


def test_config_must_be_an_object():
    with pytest.raises(ConfigError, match="must be a JSON object"):
        RunConfig.from_dict([1, 2])


def test_malformed_and_missing_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"batch_size": 32,,}')
    with pytest.raises(ConfigError, match=r"malformed JSON in .*bad.json: .* line 1"):
        RunConfig.from_json(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        RunConfig.from_json(tmp_path / "nope.json")


def test_parse_set():
    assert parse_set(["batch_size=64", "norm=ghost", "milestones=[1,2]", "augment_val=true", "lr=0.1"]) == {
        "batch_size": 64, "norm": "ghost", "milestones": [1, 2], "augment_val": True, "lr": 0.1}
    with pytest.raises(ConfigError, match="key=value"):
        parse_set(["batch_size"])


# ---- derived values: eq. 1, eq. 2, scaled epochs ----
@pytest.mark.parametrize("bs", PAPER_BATCH_SIZES)
def test_derived_values_match_the_paper(bs):
    exp2, exp3, exp6 = (load_experiment(n).run_config(bs) for n in ("exp2", "exp3", "exp6"))
    assert exp3.scaled_lr == pytest.approx(0.01 * bs / 32)  # eq. 1
    assert exp2.total_epochs == 100 * bs // 32  # 100, 200, ..., 3200
    assert exp6.scaled_factor_lr == pytest.approx(10 * math.sqrt(32 / bs))  # eq. 2
    assert exp2.scaled_lr == 0.01  # scaled epochs keep the lr


def test_eq2_values():
    got = [round(load_experiment("exp6").run_config(bs).scaled_factor_lr, 2) for bs in PAPER_BATCH_SIZES]
    assert got == [10.0, 7.07, 5.0, 3.54, 2.5, 1.77]


# ---- experiment declarations ----
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_and_recipe_resolves(name, recipe):
    exp = load_experiment(name, recipe)
    for bs in exp.batch_sizes:
        cfg = exp.run_config(bs)
        assert (cfg.experiment, cfg.recipe, cfg.batch_size) == (name, recipe, bs)
    assert exp.label
    assert set(exp.batch_sizes) <= set(PAPER_TABLE.get(name, PAPER_BATCH_SIZES))  # lr-grid: not a Table I row


def test_experiments_are_small_diffs_with_the_papers_settings():
    e = {n: load_experiment(n).run_config(1024 if n != "exp2" else 512) for n in EXPERIMENTS}
    assert e["exp1"].norm == "none" and e["exp1"].schedule == "constant"
    assert load_experiment("exp2").batch_sizes == (32, 64, 128, 256, 512)
    assert e["exp3"].norm == "ghost" and e["exp3"].virtual_batch_size == 32 and e["exp3"].lr_scaling == "linear"
    assert e["exp4"].schedule == "warmup_step" and e["exp4"].milestones == (30, 60, 90) and e["exp4"].warmup_epochs == 5
    assert e["exp5"].schedule == "cyclic" and e["exp5"].cyclic_mode == "triangular2" and e["exp5"].cyclic_step_epochs == 12
    assert load_experiment("exp5").search == {"factor_lr": (10, 5, 2)}
    assert load_experiment("exp6").search == {}
    assert e["exp6"].factor_lr_scaling == "sqrt"
    # the text: no momentum anywhere
    assert all(c.momentum == 0 and not c.cycle_momentum for c in e.values())


def test_authors_code_recipe_differences():
    text, code = load_experiment("exp5", "text").run_config(1024), load_experiment("exp5", "authors-code").run_config(1024)
    assert (code.cycle_momentum, code.augment_val, code.rotate_p, code.translate_p) == (True, True, 1.0, 1.0)
    assert (text.cycle_momentum, text.augment_val, text.rotate_p, text.translate_p) == (False, False, 0.5, 0.5)
    # where the text is silent both recipes follow the code
    for cfg in (text, code):
        assert (cfg.drop_last, cfg.bn_momentum, cfg.weight_decay, cfg.precision, cfg.hflip_p) == (False, 0.99, 1e-6, "fp32", 0.5)
    # everything else is the same in both recipes
    diff = {k for k, v in code.to_dict().items() if text.to_dict()[k] != v}
    assert diff == {"recipe", "cycle_momentum", "augment_val", "rotate_p", "translate_p"}
    assert not load_experiment("exp4", "authors-code").run_config(64).warmup_per_iteration
    assert load_experiment("exp4", "text").run_config(64).warmup_per_iteration
    assert not load_experiment("exp3", "authors-code").run_config(64).cycle_momentum


def test_unknown_experiment_and_recipe():
    with pytest.raises(ConfigError, match="unknown experiment 'exp7'; valid: exp1, exp2"):
        load_experiment("exp7")
    with pytest.raises(ConfigError, match="unknown recipe 'authors'; valid: text, authors-code"):
        load_experiment("exp1", "authors")


def test_load_config_accepts_flat_files_names_and_declarations(tmp_path):
    flat = tmp_path / "run.json"
    flat.write_text(json.dumps({"batch_size": 64, "norm": "batch"}))
    assert load_config(flat).batch_size == 64
    assert load_config(flat, overrides={"batch_size": 128}).batch_size == 128
    assert load_config("exp5", "authors-code", {"batch_size": 256}).cycle_momentum
    from bigbatch.experiments import CONFIG_DIR
    assert load_config(CONFIG_DIR / "exp6.json", overrides={"batch_size": 128}).factor_lr_scaling == "sqrt"
    assert load_config(None, overrides={"lr": 0.5}).lr == 0.5


def test_readme_documents_every_key_as_the_source_says():
    """The README's key table is the one generated from config.py's comments (python -m bigbatch.config)."""
    from pathlib import Path

    from bigbatch.config import reference_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert reference_table() in readme, "README key table is stale: paste `python -m bigbatch.config` into it"


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        RunConfig(batch_size=0)
    with pytest.raises(ConfigError, match="virtual_batch_size=32 is larger than batch_size=16"):
        RunConfig(norm="ghost", batch_size=16)


# epoch_scale: the warmup must stay shorter than the scaled training on both sides of the boundary.
# Per iteration the scaled warmup may be fractional; per epoch it is rounded half up to whole epochs.
# name, config keys, error fragment (None: valid)
EPOCH_SCALE_VALIDATION = [
    ("per-iteration-warmup-4.5-of-5", dict(epochs=10, epoch_scale=0.5, warmup_epochs=9, milestones=[8]), None),
    ("per-iteration-warmup-5-of-5", dict(epochs=10, epoch_scale=0.5, warmup_epochs=10, milestones=[8]),
     "warmup_epochs=10 (x epoch_scale 0.5 = 5 epochs) is not shorter than training (5 epochs)"),
    ("per-epoch-warmup-4-of-5", dict(epochs=10, epoch_scale=0.5, warmup_epochs=8, warmup_per_iteration=False, milestones=[8]), None),
    ("per-epoch-warmup-4.5-rounds-to-5-of-5",
     dict(epochs=10, epoch_scale=0.5, warmup_epochs=9, warmup_per_iteration=False, milestones=[8]),
     "warmup_epochs=9 (x epoch_scale 0.5 = 4.5 epochs, 5 whole epochs when stepped per epoch) is not shorter than training (5 epochs)"),
    ("per-epoch-tiny-warmup-is-one-epoch-of-two", dict(epochs=100, epoch_scale=0.02, warmup_epochs=5, warmup_per_iteration=False), None),
    ("per-epoch-tiny-warmup-is-one-epoch-of-one",
     dict(epochs=100, epoch_scale=0.01, warmup_epochs=5, warmup_per_iteration=False),
     "(x epoch_scale 0.01 = 0.05 epochs, 1 whole epochs when stepped per epoch) is not shorter than training (1 epochs)"),
    ("per-iteration-tiny-warmup-fits-one-epoch", dict(epochs=100, epoch_scale=0.01, warmup_epochs=5), None),
    ("exp2-scaled-epochs-then-scale", dict(epochs=5, epochs_scaling="linear", batch_size=64, epoch_scale=0.5, warmup_epochs=4, milestones=[8]), None),
    ("exp2-scaled-epochs-then-scale-too-short",
     dict(epochs=5, epochs_scaling="linear", batch_size=64, epoch_scale=0.5, warmup_epochs=10, milestones=[8]),
     "is not shorter than training (5 epochs)"),
    ("scale-1-message-unchanged", dict(epochs=5, warmup_epochs=5), "warmup_epochs=5 is not shorter than training (5 epochs)"),
    ("scale-zero", dict(epoch_scale=0), "epoch_scale must be a positive number, got 0"),
    ("scale-negative", dict(epoch_scale=-0.5), "epoch_scale must be a positive number"),
    ("scale-nan", dict(epoch_scale=float("nan")), "epoch_scale must be a positive number"),
    ("scale-inf", dict(epoch_scale=float("inf")), "epoch_scale must be a positive number"),
    ("scale-string", dict(epoch_scale="0.1"), "epoch_scale must be float"),
    ("scale-int-accepted", dict(epoch_scale=2), None),
    ("scale-tiny-trains-one-epoch", dict(epoch_scale=1e-6, schedule="constant"), None),
]


@pytest.mark.parametrize("name,changes,fragment", EPOCH_SCALE_VALIDATION, ids=[c[0] for c in EPOCH_SCALE_VALIDATION])
def test_epoch_scale_validation(name, changes, fragment):
    d = {"schedule": "warmup_step", **changes}
    if fragment is None:
        cfg = RunConfig.from_dict(d)
        assert cfg.total_epochs >= 1 and isinstance(cfg.epoch_scale, float)
        return
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(d)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_whole_epochs_rounds_half_up():
    from bigbatch.config import whole_epochs

    cases = [(0, 0), (0.0, 0), (1e-9, 1), (0.2, 1), (0.5, 1), (1.0, 1), (1.4999, 1), (1.5, 2), (2.5, 3), (30 * 0.3, 9), (30 * 0.1, 3), (7.5, 8)]
    assert [whole_epochs(x) for x, _ in cases] == [w for _, w in cases]


def test_every_key_has_one_role_and_the_key_lists_derive_from_them():
    """Roles are declared once on the fields; the resume check, the table's non-nuisance keys and the
    report's paper-scale keys are derived (they used to be three hand-kept lists that disagreed)."""
    import pandas as pd

    from analysis.report import PAPER_SCALE, deviations
    from analysis.table import NOT_NUISANCE
    from bigbatch.config import ROLES, key_role, keys_with_role
    from bigbatch.train import RESUME_FREE_KEYS

    keys = [f.name for f in dataclasses.fields(RunConfig)]
    assert all(key_role(k) in ROLES for k in keys)
    assert set().union(*(keys_with_role(r) for r in ROLES)) == set(keys)
    assert RESUME_FREE_KEYS == keys_with_role("bookkeeping") and "device" in RESUME_FREE_KEYS and "lr" not in RESUME_FREE_KEYS
    assert {"gns_images", "sharpness_iters", "dataset", "recipe", "eval_batch_size"} <= NOT_NUISANCE
    assert not {"precision", "deterministic", "init", "lr", "factor_lr"} & NOT_NUISANCE  # these change results
    assert PAPER_SCALE["epoch_scale"] == 1.0 and PAPER_SCALE["width_mult"] == 1.0 and PAPER_SCALE["epochs"] == 100
    lines = deviations(pd.DataFrame({"epoch_scale": [0.1, 0.1], "width_mult": [0.125, 0.125], "dataset": ["cifar10"] * 2}))
    assert any(line.startswith("`epoch_scale` = 0.1") for line in lines) and any("width_mult" in line for line in lines)
    with pytest.raises(ValueError, match="unknown role 'resultz'"):
        keys_with_role("resultz")
