"""The workflow itself: the default DAG builds; a tiny config runs; reruns give the same bytes; bad input stops cleanly."""

import subprocess

import gemmi
import pytest
import yaml

from conftest import ROOT, SNAKEMAKE, TINY, run_snakemake

pytestmark = pytest.mark.slow


def test_default_config_dry_run_succeeds():
    res = subprocess.run([str(SNAKEMAKE), "-n", "--forceall", "--quiet", "rules"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    for name in ("structure_factors", "structure_factor_summary"):
        assert name in res.stdout + res.stderr


def test_tiny_config_produces_mtz_files(tiny_run):
    for structure in ("ni", "pb"):
        for energy in ("7", "8"):
            mtz = gemmi.read_mtz_file(str(tiny_run / f"results/structure_factors/{structure}/{energy}keV.mtz"))
            assert mtz.spacegroup.hm == "F m -3 m" and mtz.nreflections > 3
            assert mtz.resolution_high() >= 0.7 - 1e-6
    summary = (tiny_run / "results/structure_factors/summary.tsv").read_text().splitlines()
    assert summary[0].startswith("structure\tenergy_kev\treflections_asu") and len(summary) == 7
    assert (tiny_run / "results/structure_factors/resolution_shells.png").stat().st_size > 10_000
    assert (tiny_run / "logs/structure_factors/ni/7keV.log").read_text().count("wrote") == 1


def test_tiny_config_produces_geometry_and_water_per_dataset(tiny_run):
    from braggflow.formats.background import read_background

    for dataset in ("7keV_100mm", "8keV_100mm"):
        bg = read_background(tiny_run / f"results/backgrounds/{dataset}/water.h5")
        assert bg.geometry.camera_length_m == 0.1 and bg.photons.shape == (1065, 1030)
        assert bg.photons.max() > 0 and (tiny_run / f"results/backgrounds/{dataset}/water.png").stat().st_size > 10_000
        assert "clen = 0.1" in (tiny_run / f"results/geometry/{dataset}/{dataset}.geom").read_text()


def test_tiny_config_simulates_sharded_frames_with_truth(tiny_run):
    import h5py

    from braggflow.formats.shards import read_frame_arrays, read_truth

    for dataset in ("7keV_100mm", "8keV_100mm"):
        shards = sorted((tiny_run / f"results/simulated/1ic6/{dataset}").glob("shard_*.h5"))
        assert [p.name for p in shards] == ["shard_0000.h5", "shard_0001.h5"]
        frames = [read_frame_arrays(p)["frame_index"].tolist() for p in shards]
        assert frames == [[0, 1], [2]]
        with h5py.File(shards[0]) as f:
            assert f["entry/data/data"].shape == (2, 1065, 1030) and f["entry/data/data"].dtype == "float32"
            assert f["braggflow"].attrs["dataset"] == dataset
        truth = read_truth(shards[0])
        assert set(truth.frame_index) == {0, 1} and (truth.photons > 0).sum() > 5


def test_tiny_config_overlays_frames_with_labels_and_a_gallery(tiny_run):
    from braggflow.overlay import read_overlay_frames

    for dataset in ("7keV_100mm", "8keV_100mm"):
        frames = [read_overlay_frames(tiny_run / f"results/overlays/1ic6/{dataset}/shard_{i:04d}.h5") for i in (0, 1)]
        assert [f.frame_index.tolist() for f in frames] == [[0, 1], [2]]
        gallery = tiny_run / f"results/overlays/1ic6/{dataset}/gallery.png"
        assert gallery.stat().st_size > 20_000


def test_rerun_gives_the_same_bytes(tiny_run, tmp_path):
    res = run_snakemake(tmp_path, configfile=TINY)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    for rel in ("results/structure_factors/pb/8keV.mtz", "results/structure_factors/summary.tsv",
                "results/backgrounds/7keV_100mm/water.h5", "results/geometry/8keV_100mm/8keV_100mm.geom",
                "results/simulated/1ic6/8keV_100mm/shard_0001.h5", "results/overlays/1ic6/7keV_100mm/shard_0000.h5",
                "results/phases/tiny3/dataset.h5", "results/phases/tiny3/models/unet.pt",
                "results/phases/tiny3/evaluation/loss_table.tsv"):
        assert (tmp_path / rel).read_bytes() == (tiny_run / rel).read_bytes(), rel


def test_bad_structure_stops_with_the_file_named_and_no_output(tmp_path):
    bad = tmp_path / "broken.pdb"
    bad.write_text((ROOT / "resources/structures/1ic6.pdb").read_text()[:150_000])
    cfg = yaml.safe_load(TINY.read_text())
    cfg["structures"] = {"broken": {"file": str(bad)}}
    cfg["simulation"]["structures"] = ["broken"]
    cfg.pop("experiments")  # they name 1ic6
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = run_snakemake(tmp_path / "work", configfile=tmp_path / "c.yaml")
    assert res.returncode != 0
    # Reported while the DAG is built (the DIALS stage reads the structure's symmetry) or by the job's log.
    logs = [p.read_text() for p in (tmp_path / "work/logs/structure_factors/broken").glob("*keV.log")]
    shown = res.stdout + res.stderr + "".join(logs)
    assert "broken.pdb: truncated PDB" in shown
    assert not list((tmp_path / "work").glob("results/structure_factors/broken/*"))


def test_bad_config_key_stops_the_dry_run_with_the_key_named(tmp_path):
    cfg = yaml.safe_load(TINY.read_text())
    cfg["matrix"]["camera_lengths_m"] = [0.25, -1.0]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = run_snakemake(tmp_path / "work", "-n", configfile=tmp_path / "c.yaml")
    assert res.returncode != 0
    assert "config key 'matrix.camera_lengths_m[1]': -1.0 is less than the minimum of 0.02" in res.stdout + res.stderr


def test_benchmark_summary_has_figures_of_every_job(tiny_run):
    import pandas as pd

    # Which rules: tests/test_rerun_contract.py (every rule with a benchmark: directive).
    summary = pd.read_csv(tiny_run / "results/benchmarks/summary.tsv", sep="\t")
    assert {"structure_factors", "simulate", "train_peak_finder", "predict", "matched_frames"} <= set(summary.rule)
    assert (summary.seconds_median > 0).all()
    assert (tiny_run / "results/benchmarks/summary.png").stat().st_size > 10_000


def test_a_finished_run_has_nothing_left_to_do(tiny_run):
    """Every job's params are stable between invocations, so a rerun touches nothing."""
    res = run_snakemake(tiny_run, "-n", configfile=TINY)
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr, (res.stdout + res.stderr)[-3000:]


def test_tiny_config_refines_every_indexed_still_and_the_detector(tiny_run):
    import json

    import pandas as pd

    from braggflow.formats.tables import read_table

    out = tiny_run / "results/refined/1ic6"
    for d in ("7keV_100mm", "8keV_100mm"):
        for s in ("0000", "0001"):
            stills = pd.read_csv(out / f"{d}/shard_{s}/stills.tsv", sep="\t")
            dials = read_table(tiny_run / f"results/dials/1ic6/{d}/shard_{s}/tables.h5", "frames")
            assert stills.frame_index.tolist() == dials.frame_index.tolist()  # every frame has its row
            assert (stills.status == "converged").tolist() == dials.indexed.tolist()
            assert stills[~dials.indexed.to_numpy()].message.eq("DIALS did not index this still").all()
            expt = json.loads((out / f"{d}/shard_{s}/refined.expt").read_text())
            assert len(expt["experiment"]) == int(dials.indexed.sum())
            for i, e in zip(stills.expt_index[stills.expt_index >= 0], expt["experiment"]):
                assert e["crystal"] == i
        detector = json.loads((out / f"{d}/detector.json").read_text())
        # DIALS was given the true geometry: the refined detector stays there
        assert detector["converged"] and abs(detector["distance_shift_mm"]) < 0.05
        assert max(abs(v) for v in detector["beam_shift_px"]) < 0.1
    scores = pd.read_csv(out / "scores.tsv", sep="\t")
    assert scores.dataset.tolist() == ["7keV_100mm", "8keV_100mm"]
    assert (scores.not_converged == 0).all() and (scores.refined > 0).all()
    assert (scores.rmsd_refined_px < 0.5 * scores.rmsd_dials_px).all()
    assert (scores.misorientation_mean_refined_median_deg < scores.misorientation_mean_dials_median_deg).all()
    assert (scores.cell_error_refined_max_rel < scores.cell_error_dials_max_rel).all()
    bins = pd.read_csv(out / "offsets_by_resolution.tsv", sep="\t")
    assert set(bins.dataset) == {"all", "7keV_100mm", "8keV_100mm"} and bins.n.sum() == 2 * scores.reflections.sum()
    for png in ("scores.png", "offsets_by_resolution.png"):
        assert (out / png).stat().st_size > 10_000

    # the real CSPAD stills: every frame has its row, each refined still a crystal in the .expt (on all 64
    # panels, images named by their CBFs), and DIALS' strong spots are scored against both predictions
    real = tiny_run / "results/refined/experiments/cspad"
    stills = pd.read_csv(real / "stills.tsv", sep="\t")
    assert stills.frame.tolist() == [0, 1] and stills.spots.gt(0).all()
    assert stills.status.isin(["converged", "not converged"]).all()
    expt = json.loads((real / "refined.expt").read_text())
    assert len(expt["experiment"]) == 2 and len(expt["detector"][0]["panels"]) == 64
    assert all(i["images"][0].endswith(".cbf") for i in expt["imageset"])
    offsets = pd.read_csv(real / "offsets.tsv", sep="\t")
    assert len(offsets) >= 20 and offsets.panel.nunique() > 5
    by_bin = pd.read_csv(real / "offsets_by_resolution.tsv", sep="\t")
    overall = by_bin[by_bin.bin == "all"].iloc[0]
    assert overall.n == len(offsets) and overall.rmsd_dials_px < 1.5 and overall.rmsd_refined_px < 1.5
    assert overall.rmsd_dials_um == pytest.approx(overall.rmsd_dials_px * 109.92, rel=1e-3)
    assert (real / "offsets_by_resolution.png").stat().st_size > 10_000


def test_tiny_config_trains_and_scores_the_four_phase_models(tiny_run):
    import json

    import pandas as pd

    from braggflow.formats.phase_volumes import read_dataset_id

    base = tiny_run / "results/phases/tiny3"
    ident = read_dataset_id(base / "dataset.h5")
    for kind in ("linear", "mlp", "cnn", "unet"):
        card = json.loads((base / f"models/{kind}.json").read_text())
        assert card["model"] == kind and card["dataset"]["dataset_id"] == ident
        assert len(pd.read_csv(base / f"models/{kind}.history.tsv", sep="\t")) == card["training"]["epochs_run"]
    table = pd.read_csv(base / "evaluation/loss_table.tsv", sep="\t")
    assert set(table.model) == {"linear", "mlp", "cnn", "unet", "zero_phases", "random_phases"}
    assert set(table.split) == {"train", "validation", "test_seen", "test_unseen"} and len(table) == 24
    assert table.loss.between(0, 2).all() and table.rscc_median.between(-1, 1).all()
    shells = pd.read_csv(base / "evaluation/shells.tsv", sep="\t")
    assert set(shells.split) == {"test_seen", "test_unseen"} and shells.shell.nunique() == 6
    for fig in ("learning_curves.png", "shells.png", "density.png"):
        assert (base / "evaluation" / fig).stat().st_size > 10_000, fig
    assert "the U-Net" in (tiny_run / "logs/phases/tiny3/evaluate.log").read_text()
