"""Study definitions: the ablation rows, seeds, study files, grid and random sweeps, their
validation, validation-only selection and mean ± std over seeds."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from srs_core.config import load_config
from srs_core.errors import ConfigError, DataError
from srs_core.study import (
    MAX_VARIANTS,
    Variant,
    ablation,
    aggregate,
    expand_seeds,
    format_mean_std,
    load_study,
    mean_std,
    select_best,
)
from srs_core.study.variants import format_value


def changed_keys(variant: Variant, preset: str = "tiny") -> dict[str, object]:
    """The settings ``variant`` changes against the preset's config, as ``section.key``."""
    base = load_config([], [], preset=preset).to_dict()
    new = load_config([], variant.args(), preset=preset).to_dict()
    return {f"{s}.{k}": v for s, keys in new.items() for k, v in keys.items()
            if base[s][k] != v}


def write(tmp_path: Path, data: object, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False),
                    encoding="utf-8")
    return path


# -- ablation and seeds --------------------------------------------------------------------------
def test_ablation_rows_change_exactly_their_switches() -> None:
    study = ablation()
    assert study.names == ["full", "no-emotion", "no-hard-mining", "no-polarity",
                           "no-simclr-intra", "no-simclr-inter", "no-simclr"]
    expected = {
        "full": {},
        "no-emotion": {"loss.emotion": False},
        "no-hard-mining": {"loss.hard_mining": False},
        "no-polarity": {"loss.polarity": False},
        "no-simclr-intra": {"loss.simclr_intra": False},
        "no-simclr-inter": {"loss.simclr_inter": False},
        "no-simclr": {"loss.simclr_intra": False, "loss.simclr_inter": False},
    }
    for variant in study.variants:
        assert variant.seed is None and variant.base == variant.name
        assert changed_keys(variant) == expected[variant.name]
    active = {v.name: load_config([], v.args()).loss.active_terms for v in study.variants}
    assert active["no-simclr"] == ("ita", "itm", "emotion")
    assert active["full"] == ("ita", "itm", "simclr_intra", "simclr_inter", "emotion")


def test_seeds_repeat_every_variant_with_consecutive_seeds() -> None:
    study = ablation(seeds=3)
    assert len(study.variants) == 21 and study.seeds == 3
    assert study.names[:4] == ["full/seed0", "full/seed1", "full/seed2", "no-emotion/seed0"]
    full = study.variants[:3]
    assert [v.seed for v in full] == [42, 43, 44]
    assert [v.base for v in full] == ["full"] * 3 and full[1].slug == "full-seed1"
    assert changed_keys(full[2]) == {"train.seed": 44}
    assert changed_keys(study.variant("no-polarity/seed1")) == {
        "loss.polarity": False, "train.seed": 43}
    # the base seed is the variant's own train.seed, else the run's
    own = expand_seeds([Variant("a", {"train.seed": 7}), Variant("b")], 2, base_seed=100)
    assert [(v.name, v.seed) for v in own] == [("a/seed0", 7), ("a/seed1", 8),
                                               ("b/seed0", 100), ("b/seed1", 101)]
    assert [v.seed for v in ablation(seeds=2, base=["train.seed=5"]).variants[:2]] == [5, 6]
    assert expand_seeds([Variant("a")], 1) == [Variant("a")]
    for bad in (0, -1, 33, True, 1.5):
        with pytest.raises(ConfigError, match="seeds must be an integer"):
            ablation(seeds=bad)


def test_override_values_round_trip_through_section_key_text() -> None:
    for value in (True, False, 1e-5, 0.0001, 4, -2, 3.0, "abc", "true", "", "a b: c"):
        (arg,) = Variant("v", {"data.sentiment": value}).args()
        assert yaml.safe_load(arg.split("=", 1)[1]) == value or value == ""
    assert format_value(1e-5) == "1.0e-05"  # a dot, so YAML 1.1 reads a float


# -- study files -----------------------------------------------------------------------------------
def test_file_variants_in_order_with_seeds_from_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "seeds: 2\nvariants:\n  full: {}\n  no-emotion: {loss.emotion: false}"
                           "\n  long: {train.epochs: 10, train.lr: 3.0e-4}\n  plain:\n")
    study = load_study(path, preset="tiny")
    assert study.name == "study" and study.sweep is None
    assert study.names == ["full/seed0", "full/seed1", "no-emotion/seed0", "no-emotion/seed1",
                           "long/seed0", "long/seed1", "plain/seed0", "plain/seed1"]
    assert changed_keys(study.variant("long/seed1")) == {
        "train.epochs": 10, "train.lr": 3e-4, "train.seed": 43}
    assert changed_keys(study.variant("plain/seed0")) == {}
    assert load_study(path, seeds=1).names == ["full", "no-emotion", "long", "plain"]


def test_grid_is_the_cartesian_product(tmp_path: Path) -> None:
    path = write(tmp_path, {"variants": {"full": {}}, "sweep": {
        "method": "grid", "parallelism": 3, "parameters": {
            "train.lr": {"values": [1e-4, 3e-4]},
            "train.batch_size": {"values": [4, 8, 16]},
            "loss.hard_negative_scale": {"values": ["paper", "temperature"]}}}})
    study = load_study(path)
    assert study.sweep.size == 12 and study.sweep.parallelism == 3
    assert study.names == ["full", *[f"sweep-{i:03d}" for i in range(12)]]
    points = [v.overrides for v in study.variants[1:]]
    assert points[0] == {"train.lr": 1e-4, "train.batch_size": 4,
                         "loss.hard_negative_scale": "paper"}
    assert points[1]["loss.hard_negative_scale"] == "temperature"  # the last key varies fastest
    assert {tuple(p.values()) for p in points} == {
        (lr, b, s) for lr in (1e-4, 3e-4) for b in (4, 8, 16) for s in ("paper", "temperature")}
    assert changed_keys(study.variants[12]) == {"train.lr": 3e-4, "train.batch_size": 16,
                                                "loss.hard_negative_scale": "temperature"}


def random_file(tmp_path: Path, seed: int = 7, trials: int = 40) -> Path:
    return write(tmp_path, {"sweep": {"method": "random", "trials": trials, "seed": seed,
                                      "parameters": {
                                          "train.lr": {"min": 1e-5, "max": 1e-2, "scale": "log"},
                                          "train.epochs": {"min": 2, "max": 6},
                                          "loss.simclr_weight": {"min": 0.1, "max": 1.0},
                                          "loss.emotion": {"values": [True, False]}}}},
                 f"random-{seed}.yaml")


def test_random_sweep_is_reproducible_in_range_and_log_scaled(tmp_path: Path) -> None:
    study = load_study(random_file(tmp_path))
    points = [v.overrides for v in study.variants]
    assert len(points) == 40 and study.names[-1] == "sweep-039"
    assert points == [v.overrides for v in load_study(random_file(tmp_path)).variants]
    assert points != [v.overrides for v in load_study(random_file(tmp_path, 8)).variants]
    lrs = [p["train.lr"] for p in points]
    assert all(1e-5 <= x <= 1e-2 for x in lrs)
    # log scale: the decades are about equally filled (linear would put ~90% above 1e-3)
    assert sum(x < 1e-4 for x in lrs) >= 5 and sum(x > 1e-3 for x in lrs) <= 25
    assert all(float(f"{x:.6g}") == x for x in lrs)
    epochs = [p["train.epochs"] for p in points]
    assert all(isinstance(e, int) and 2 <= e <= 6 for e in epochs) and len(set(epochs)) > 2
    assert all(0.1 <= p["loss.simclr_weight"] <= 1.0 for p in points)
    assert {p["loss.emotion"] for p in points} == {True, False}
    for v in study.variants[:3]:
        assert set(changed_keys(v, "paper")) <= set(v.overrides)


def test_a_file_may_hold_both_forms_and_sweep_trials_get_seeds(tmp_path: Path) -> None:
    path = write(tmp_path, {"seeds": 2, "variants": {"full": {}}, "sweep": {
        "method": "random", "trials": 2, "parameters": {"train.lr": {"values": [1e-4]}}}})
    assert load_study(path).names == ["full/seed0", "full/seed1", "sweep-000/seed0",
                                      "sweep-000/seed1", "sweep-001/seed0", "sweep-001/seed1"]


@pytest.mark.parametrize(("content", "message"), [
    ("variants: {full: {}}\nvariants: {a: {}}\n", "duplicate key 'variants'"),
    ("variants: [full\n", "not valid YAML"),
    ("- full\n", "expected a mapping with variants"),
    ("{}\n", "defines no variant"),
    ("variants: {}\n", "defines no variant"),
    ("variant: {full: {}}\n", "unknown top-level key 'variant'"),
    ("variants: {full: {}, full: {}}\n", "duplicate key 'full'"),
    ("variants: {Full: {}}\n", "variant name 'Full'"),
    ("variants: {a/b: {}}\n", "variant name 'a/b'"),
    (f"variants: {{{'a' * 41}: {{}}}}\n", "must be 1-40"),
    ("variants: {x: [1]}\n", "variants.x must be a mapping"),
    ("variants: {x: {loss.emotoin: false}}\n", "variants.x: override 'loss.emotoin=false': "
                                               "unknown key loss.emotoin"),
    ("variants: {x: {los.emotion: false}}\n", "unknown section 'los'"),
    ("variants: {x: {emotion: false}}\n", "key 'emotion' must look like section.key"),
    ("variants: {x: {loss.emotion: 3}}\n", "variants.x: .*expected bool"),
    ("variants: {x: {train.lr: -1}}\n", "variants.x: train.lr must be > 0"),
    ("variants: {x: {train.precision: fp16}}\n", "'fp16' is not one of"),
    ("variants: {x: {train.output: s3://b/x}}\n", "train.output is not a variant setting"),
    ("seeds: 0\nvariants: {full: {}}\n", "seeds must be an integer"),
    ("sweep: {method: bayes, parameters: {train.lr: {values: [1]}}}\n", "sweep.method"),
    ("sweep: {method: random, parameters: {train.lr: {values: [1.0e-4]}}}\n",
     "sweep.trials: a random sweep needs trials"),
    ("sweep: {method: grid, trials: 3, parameters: {train.lr: {values: [1.0e-4]}}}\n",
     "drop trials"),
    ("sweep: {method: random, trials: 0, parameters: {train.lr: {values: [1]}}}\n",
     "sweep.trials: expected an integer from 1 to 256"),
    ("sweep: {method: random, trials: 2, parameters: {}}\n", "sweep.parameters: expected"),
    ("sweep: {method: random, trials: 2, parameters: {train.lrr: {values: [1]}}}\n",
     "sweep.parameters.train.lrr: unknown key train.lrr"),
    ("sweep: {method: grid, parameters: {train.lr: {min: 1.0e-5, max: 1.0e-3}}}\n",
     "a grid needs values"),
    ("sweep: {method: random, trials: 2, parameters: {train.lr: {values: []}}}\n",
     "train.lr.values: expected a non-empty list"),
    ("sweep: {method: random, trials: 2, parameters: {train.lr: {values: [1, 1]}}}\n",
     "listed twice"),
    ("sweep: {method: random, trials: 2, parameters: {train.lr: {min: 1.0e-3, max: 1.0e-5}}}\n",
     "min 0.001 must be below max"),
    ("sweep: {method: random, trials: 2, parameters: {train.lr: {min: 0, max: 1, scale: log}}}"
     "\n", r"sweep.parameters.train.lr.min: train.lr must be > 0"),
    ("sweep: {method: random, trials: 2, parameters: {loss.simclr_weight: {min: 0, max: 1, "
     "scale: log}}}\n", "a log scale needs min > 0"),
    ("sweep: {method: random, trials: 2, parameters: {train.epochs: {min: 1.5, max: 3}}}\n",
     "train.epochs is an integer setting"),
    ("sweep: {method: random, trials: 2, parameters: {loss.emotion: {min: 0, max: 1}}}\n",
     "loss.emotion is a bool: give values"),
    ("sweep: {method: random, trials: 2, parameters: {train.lr: {min: 1, max: 2, step: 1}}}\n",
     "unknown key 'step'"),
    ("sweep: {method: random, trials: 2, parallelism: 0, parameters: {train.lr: "
     "{values: [1]}}}\n", "sweep.parallelism"),
    ("sweep: {method: grid, parameters: {train.batch_size: {values: [1, 2, 3, 4, 5, 6, 7, 8, "
     "9, 10, 11, 12, 13, 14, 15, 16, 17]}, train.epochs: {values: [1, 2, 3, 4, 5, 6, 7, 8, 9, "
     "10, 11, 12, 13, 14, 15, 16]}}}\n", "the grid has 272 points, above the cap of 256"),
])
def test_bad_study_files_are_one_line_errors_naming_file_and_key(tmp_path: Path, content: str,
                                                                 message: str) -> None:
    path = write(tmp_path, content, "bad.yaml")
    with pytest.raises(ConfigError, match=message) as info:
        load_study(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path)), text


def test_cross_setting_rules_and_total_cap_and_unknown_source(tmp_path: Path) -> None:
    # each value alone against the preset (tiny's min_lr is 5e-5) ...
    path = write(tmp_path, {"sweep": {"method": "grid", "parameters": {
        "train.lr": {"values": [1e-5, 1e-4]}}}})
    assert len(load_study(path, preset="paper").variants) == 2
    with pytest.raises(ConfigError, match="train.lr.values: train.min_lr 5e-05 is above"):
        load_study(path, preset="tiny")
    # ... and every grid point as a whole: lr=1e-4 with min_lr=5e-4 breaks min_lr <= lr
    path = write(tmp_path, {"sweep": {"method": "grid", "parameters": {
        "train.lr": {"values": [1e-4, 1e-3]}, "train.min_lr": {"values": [1e-5, 5e-4]}}}})
    with pytest.raises(ConfigError, match=r"sweep: trial sweep-001 \(train.lr=0.0001 "
                       r"train.min_lr=0.0005\): train.min_lr 0.0005 is above"):
        load_study(path, preset="tiny")
    many = write(tmp_path, {"seeds": 2, "sweep": {"method": "random", "trials": 200,
                                                  "parameters": {"train.lr": {"values": [1]}}}},
                 "many.yaml")
    with pytest.raises(ConfigError, match=f"400 variants .* cap of {MAX_VARIANTS}"):
        load_study(many)
    with pytest.raises(ConfigError, match="neither 'ablation' nor a study file"):
        load_study(tmp_path / "missing.yaml")
    assert load_study("ablation", seeds=2).seeds == 2


# -- selection and aggregation --------------------------------------------------------------------
def run(val_map: float, test_map: float, **more: float) -> dict:
    return {"val": {"MAP": val_map, **more}, "test": {"MAP": test_map, **more}}


def test_selection_reads_validation_only_and_ties_go_to_the_first() -> None:
    results = {"full": run(0.60, 0.90), "no-emotion": run(0.70, 0.10), "no-simclr": run(0.65,
                                                                                        0.95)}
    assert select_best(results) == "no-emotion"  # test MAP would pick no-simclr
    assert max(results, key=lambda n: results[n]["test"]["MAP"]) == "no-simclr"
    tied = {"b": run(0.7, 0.1), "a": run(0.7, 0.9), "c": run(float("nan"), 1.0)}
    assert select_best(tied) == "b"
    assert select_best(tied, order=["c", "a", "b"]) == "a"
    assert select_best({"x": run(float("nan"), 1), "y": run(0.1, 0)}) == "y"
    with pytest.raises(DataError, match="no validation MAP"):
        select_best({"x": {"test": {"MAP": 1.0}}})
    with pytest.raises(DataError, match="NaN"):
        select_best({"x": run(float("nan"), 1.0)})
    with pytest.raises(DataError, match="no variant"):
        select_best({})


def test_mean_and_sample_std_over_seeds_per_base_variant() -> None:
    results = {
        "full/seed0": run(0.60, 0.50, MRR=0.2), "full/seed1": run(0.70, 0.54, MRR=0.4),
        "full/seed2": run(0.80, 0.58, MRR=0.9),
        "no-emotion/seed0": run(0.50, 0.40, MRR=0.1), "no-emotion/seed1": run(0.54, 0.44,
                                                                              MRR=0.3),
    }
    table = aggregate(results)
    assert list(table) == ["full", "no-emotion"]
    full = table["full"]
    assert full["n"] == 3 and full["runs"] == ["full/seed0", "full/seed1", "full/seed2"]
    assert full["val"]["MAP"]["mean"] == pytest.approx(0.70)
    assert full["val"]["MAP"]["std"] == pytest.approx(0.10)  # sqrt((0.01+0+0.01)/2)
    assert full["test"]["MAP"]["mean"] == pytest.approx(0.54)
    assert full["test"]["MAP"]["std"] == pytest.approx(0.04)
    assert full["val"]["MRR"]["mean"] == pytest.approx(0.5)
    assert full["val"]["MRR"]["std"] == pytest.approx(math.sqrt(((0.3) ** 2 + 0.1 ** 2 + 0.4 ** 2)
                                                                / 2))
    ne = table["no-emotion"]["val"]["MAP"]
    assert (ne["mean"], ne["std"]) == (pytest.approx(0.52), pytest.approx(math.sqrt(0.0008)))
    single = aggregate({"full": run(0.6, 0.5)})["full"]
    assert single["n"] == 1 and single["val"]["MAP"] == {"mean": 0.6, "std": 0.0}
    assert mean_std([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(math.sqrt(7 / 3)))
    assert format_mean_std(0.61234, 0.01, 3) == "0.6123 ± 0.0100"
    assert format_mean_std(0.61234, 0.0, 1) == "0.6123"
    with pytest.raises(DataError, match="not every seed reports val MRR"):
        aggregate({"a/seed0": run(0.1, 0.1, MRR=1.0), "a/seed1": run(0.1, 0.1)})


def test_a_variant_is_a_small_frozen_record() -> None:
    v = Variant("x", {"loss.emotion": False}, seed=3)
    assert v.settings() == {"loss.emotion": False, "train.seed": 3}
    assert v.args() == ["loss.emotion=false", "train.seed=3"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.name = "y"  # type: ignore[misc]
