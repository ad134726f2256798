"""The study comparison: validation-only selection, deltas against `full`, mean ± std over
seeds, the Markdown/CSV/JSON/HTML it writes — all against hand-made inputs."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from srs_core.errors import DataError
from srs_core.metrics import METRIC_NAMES
from srs_core.study import compare
from srs_core.study_report import compare_study


def metrics(map_: float, r1: float = 0.5) -> dict[str, float]:
    """A full metric set whose MAP/MRR are ``map_`` and R10@1/P@1 ``r1``."""
    return {"R10@1": r1, "R10@2": 0.6, "R10@5": 0.9, "R2@1": 0.7, "MAP": map_, "MRR": map_,
            "P@1": r1}


def history(*maps: float) -> list[dict]:
    """A training history: two logged steps, then one validation per MAP."""
    records = [{"step": 1, "epoch": 0, "loss": 3.0, "lr": 1e-4},
               {"step": 2, "epoch": 0, "loss": 2.5, "lr": 1e-4}]
    records += [{"step": 2 * (i + 1), "epoch": i, "val": {**metrics(m), "dialogs": 8.0}}
                for i, m in enumerate(maps)]
    return records


def evaluation(map_: float, paper_map: float, split: str = "test") -> dict:
    return {"split": split, "metrics": {**metrics(map_), "ITA_MAP": 0.1, "seconds": 2.0},
            "paper": {"metrics": metrics(paper_map)}}


def test_the_selected_validation_is_the_first_highest_map_as_training_keeps_it() -> None:
    picked = compare.selected_validation(history(0.3, 0.5, float("nan"), 0.5, 0.4))
    assert picked["MAP"] == 0.5 and set(picked) == set(METRIC_NAMES)  # no counts, no ITA_
    with pytest.raises(DataError, match="no validation record with a MAP"):
        compare.selected_validation([{"step": 1, "loss": 1.0},
                                     {"step": 2, "test_paper": metrics(0.9)}])


def test_run_results_hold_validation_and_both_protocols_of_the_evaluated_split() -> None:
    results = compare.run_results(history(0.4), evaluation(0.3, 0.35))
    assert results["val"]["MAP"] == 0.4
    assert results["test"]["MAP"] == 0.3 and results["test"]["paper_MAP"] == 0.35
    assert "ITA_MAP" not in results["test"] and "seconds" not in results["test"]
    assert list(compare.flatten(results))[:2] == ["val_R10@1", "val_R10@2"]
    # evaluating the validation split itself does not overwrite the selection's numbers
    both = compare.run_results(history(0.4), evaluation(0.2, 0.25, split="val"))
    assert both["val"]["MAP"] == 0.4 and both["val_eval"]["MAP"] == 0.2
    assert compare.column_label("val_eval_paper_MAP") == "val_eval MAP (paper)"


def test_selection_uses_validation_only_and_deltas_are_against_full() -> None:
    # `no-emotion` is far better on test, `no-simclr` on validation: validation chooses
    results = {
        "full": {"val": metrics(0.40), "test": {**metrics(0.30), "paper_MAP": 0.32}},
        "no-emotion": {"val": metrics(0.35), "test": {**metrics(0.90), "paper_MAP": 0.91}},
        "no-simclr": {"val": metrics(0.45), "test": {**metrics(0.10), "paper_MAP": 0.12}},
    }
    compared = compare.comparison(results, order=list(results))
    assert compared["best"] == "no-simclr" and compared["reference"] == "full"
    assert compared["best_metrics"]["val_MAP"] == 0.45
    assert compared["best_metrics"]["test_paper_MAP"] == 0.12
    delta = compared["variants"]["no-emotion"]["delta"]
    assert delta["val_MAP"] == pytest.approx(-0.05) and delta["test_MAP"] == pytest.approx(0.60)
    assert delta["test_paper_MAP"] == pytest.approx(0.59)
    assert compared["variants"]["full"]["delta"]["test_MAP"] == 0.0
    assert compare.cell(compared, "no-emotion", "test_MAP") == "0.9000 (+0.6000)"
    assert compare.cell(compared, "full", "test_MAP") == "0.3000"  # the reference: no delta
    # without a `full` variant there is nothing to compare against
    alone = compare.comparison({k: v for k, v in results.items() if k != "full"})
    assert alone["reference"] is None and alone["variants"]["no-simclr"]["delta"] is None
    assert compare.cell(alone, "no-emotion", "test_MAP") == "0.9000"


def seeded_results() -> dict:
    """Two seeds of `full` and `no-emotion` (MAPs picked so that mean and std are exact)."""
    return {
        "full/seed0": {"val": metrics(0.40), "test": metrics(0.30)},
        "full/seed1": {"val": metrics(0.60), "test": metrics(0.50)},
        "no-emotion/seed0": {"val": metrics(0.20), "test": metrics(0.70)},
        "no-emotion/seed1": {"val": metrics(0.30), "test": metrics(0.90)},
    }


def test_mean_and_sample_std_over_seeds_and_the_delta_of_the_means() -> None:
    results = seeded_results()
    compared = compare.comparison(results, order=list(results))
    assert compared["best"] == "full/seed1"  # a run is selected, by its validation MAP
    full, ablated = compared["variants"]["full"], compared["variants"]["no-emotion"]
    assert full["runs"] == ["full/seed0", "full/seed1"] and full["n"] == 2
    assert full["mean"]["val_MAP"] == pytest.approx(0.5)
    assert full["std"]["val_MAP"] == pytest.approx(math.sqrt(0.02))  # ddof=1: 0.1414
    assert ablated["mean"]["test_MAP"] == pytest.approx(0.8)
    assert ablated["delta"]["test_MAP"] == pytest.approx(0.4)
    assert ablated["delta"]["val_MAP"] == pytest.approx(-0.25)
    assert compare.cell(compared, "no-emotion", "val_MAP") == "0.2500 ± 0.0707 (-0.2500)"
    text = compare.markdown(compared, "ablation")
    assert "| val MAP | 0.5000 ± 0.1414 | 0.2500 ± 0.0707 (-0.2500) |" in text
    assert "Mean ± sample std over 2 seeds." in text and "**full/seed1**" in text
    rows = list(csv.DictReader(io.StringIO(compare.csv_text(compared))))
    assert [r["variant"] for r in rows] == list(results)
    assert [r["best"] for r in rows] == ["False", "True", "False", "False"]
    assert float(rows[3]["test_MAP"]) == 0.9 and rows[3]["base"] == "no-emotion"


def test_every_metric_under_both_protocols_is_a_row_of_the_table() -> None:
    results = {"full": compare.run_results(history(0.4), evaluation(0.3, 0.35))}
    labels = list(compare.table(compare.comparison(results)))
    assert len(labels) == 3 * len(METRIC_NAMES)
    assert labels[4] == "val MAP" and "test MAP" in labels and "test MAP (paper)" in labels


def write_variant(root: Path, slug: str, maps: tuple[float, ...], test: float) -> None:
    train = root / "variants" / slug / "srs"
    train.mkdir(parents=True)
    (train / "history.jsonl").write_text(
        "\n".join(json.dumps(r) for r in history(*maps)) + "\n", encoding="utf-8")
    out = root / "variants" / slug / "evaluate" / "test"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps(evaluation(test, test + 0.01)),
                                      encoding="utf-8")


def test_compare_study_reads_the_variants_and_writes_every_report(tmp_path: Path) -> None:
    write_variant(tmp_path, "full", (0.30, 0.40), 0.50)
    write_variant(tmp_path, "no-emotion", (0.45,), 0.20)
    done = compare_study(["full", "no-emotion"], str(tmp_path), split="test", indexed=True)
    compared = done["comparison"]
    assert compared["best"] == "no-emotion"
    assert compared["model"] == {
        "name": "no-emotion", "root": str(tmp_path / "variants" / "no-emotion"),
        "checkpoint": str(tmp_path / "variants" / "no-emotion" / "srs" / "best.pt"),
        "index": str(tmp_path / "variants" / "no-emotion" / "index")}
    reports = tmp_path / "comparison"
    assert sorted(p.name for p in reports.iterdir()) == [
        "comparison.csv", "comparison.html", "comparison.json", "comparison.md"]
    stored = json.loads((reports / "comparison.json").read_text())
    assert stored["variants"]["no-emotion"]["delta"]["val_MAP"] == pytest.approx(0.05)
    assert (reports / "comparison.md").read_text() == done["markdown"]
    page = (reports / "comparison.html").read_text()
    assert page == done["html"] and "0.2000 (-0.3000)" in page
    assert page.count('src="data:image/png;base64,') == 1  # the overlaid curves
    unindexed = compare_study(["full", "no-emotion"], str(tmp_path), indexed=False)
    assert unindexed["comparison"]["model"]["index"] == ""
    with pytest.raises(DataError, match="no validation record"):
        (tmp_path / "variants" / "full" / "srs" / "history.jsonl").write_text("")
        compare_study(["full"], str(tmp_path))
