"""The training rules end to end on a tiny config via Snakemake: every model, card, table and figure."""

import json

import pandas as pd
import pytest

from conftest import ROOT, run_snakemake

pytest.importorskip("torch")
pytest.importorskip("sklearn")

CONFIG = ROOT / "tests/configs/ml_tiny.yaml"
DATASETS = ("7keV_100mm", "8keV_100mm")
TARGETS = ["results/metrics/1ic6/peak_finding.tsv", "results/metrics/1ic6/energy_distance.tsv",
           "results/metrics/1ic6/energy_distance_confusion.png", "results/metrics/1ic6/learning_curves.png",
           "results/metrics/1ic6/energy_distance_learning_curve.png",
           *(f"results/metrics/1ic6/{d}/examples.png" for d in DATASETS)]


def _included() -> bool:
    return 'include: "rules/training.smk"' in (ROOT / "Snakefile").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not _included(), reason="Snakefile does not include rules/training.smk yet")
def test_training_rules_on_the_tiny_config(tmp_path_factory):
    work = tmp_path_factory.mktemp("ml_tiny")
    res = run_snakemake(work, *TARGETS, configfile=CONFIG)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    table = pd.read_csv(work / "results/metrics/1ic6/peak_finding.tsv", sep="\t")
    assert sorted(table.method.unique()) == ["baseline_dispersion", "cnn"]
    assert set(table.dataset) == set(DATASETS)
    for col in ("precision", "recall", "f1", "loc_error_median_px", "loc_error_p95_px", "hit_accuracy"):
        assert col in table
    ed = pd.read_csv(work / "results/metrics/1ic6/energy_distance.tsv", sep="\t")
    assert list(ed.method) == ["cnn", "baseline_logistic_profile"]
    for d in DATASETS:
        for name in ("peak_finder", "hit_classifier"):
            card = json.loads((work / f"results/models/1ic6/{d}/{name}.json").read_text())
            assert card["datasets"] == [d] and card["hardware"]["device"] == "cpu"
    card = json.loads((work / "results/models/1ic6/energy_distance.json").read_text())
    assert card["datasets"] == list(DATASETS)
