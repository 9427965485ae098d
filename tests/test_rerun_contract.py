"""The rerun contract: one edit of the config on a finished run reruns exactly the jobs whose outputs it changes.

Each case edits one key of tests/configs/tiny.yaml on the finished tiny run and compares the jobs `snakemake -n`
(default rerun triggers: mtime, params, input, code, software-env) wants with the set written here. Settings that
only choose how a job runs, a figure setting, the order of keys in the file and a checkout in another directory
rerun nothing; a value that makes bytes reruns its jobs and everything downstream, and only that.

The tiny run: datasets 7keV_100mm and 8keV_100mm of 1ic6 in shards 0000 (frames 0-1) and 0001 (frame 2); Ni, Pb
and 1ic6 structure factors at 7 and 8 keV; experiment `shifted` (a shifted simulation like 7keV_100mm, both
matrix peak finders and hit classifiers, the energy / camera-length model) and `cspad` (two real CSPAD stills,
the 8keV_100mm models and the matched model trained on one shard of thermolysin frames).
"""

import copy
import re
import shutil
import subprocess
from collections import Counter

import pytest
import yaml

from conftest import ROOT, SNAKEMAKE, TINY

pytestmark = pytest.mark.slow

D = ("7keV_100mm", "8keV_100mm")
SHIFTED_PREDICTIONS = ["shifted/peak_finder-7keV_100mm", "shifted/peak_finder-8keV_100mm",
                       "shifted/hit_classifier-7keV_100mm", "shifted/hit_classifier-8keV_100mm",
                       "shifted/energy_distance"]
CSPAD_MATRIX_PREDICTIONS = ["cspad/peak_finder-8keV_100mm", "cspad/hit_classifier-8keV_100mm"]
EVALUATIONS = ["shifted/7keV_100mm", "shifted/8keV_100mm", "cspad/8keV_100mm", "cspad/matched"]
# The refinement of every matrix shard, each dataset's detector and their scores.
REFINEMENT = {"refine_stills": 4, "refine_detector": 2, "refinement_scores": 1}
# The refinement of the real CSPAD stills and its scores.
REAL_REFINEMENT = {"refine_experiment": ["cspad"], "experiment_refinement_scores": ["cspad"]}
# Every job downstream of the matrix overlay shards (the same for every edit that changes all of them).
MATRIX_TRAINING = {
    "train_peak_finder": 2, "train_hit_classifier": 2, "baseline_peak_finder": 2, "peak_examples": 2,
    "peak_finding_summary": 1, "energy_distance_profiles": 1, "train_energy_distance": 1,
    "baseline_energy_distance": 1, "energy_distance_summary": 1,
    "predict": len(SHIFTED_PREDICTIONS) + len(CSPAD_MATRIX_PREDICTIONS),
    "evaluate_predictions": 3, "evaluation_offsets_plot": 2, "evaluation_summary": 1, "benchmark_summary": 1,
    **REFINEMENT,
}
DIALS_OF_SHARDS = {"dials_stills_process": 4, "dials_tables": 4, "dials_scores": 1}


def planned(workdir, config, snakefile=ROOT / "Snakefile", cwd=None) -> dict[str, list[str]]:
    """rule -> sorted wildcard values ('a/b/c') of every job `snakemake -n` would run (the target `all` left out)."""
    path = workdir.parent / f"{workdir.name}-edited.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [str(SNAKEMAKE), "-n", "-s", str(snakefile), "--directory", str(workdir), "--cores", "2",
           "--configfile", str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd or ROOT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    jobs: dict[str, list[str]] = {}
    rule = None
    for line in res.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            rule = m.group(1)
            if rule != "all":
                jobs.setdefault(rule, []).append("")
            continue
        m = re.match(r"^\s+wildcards: (.*)$", line)
        if m and rule and rule != "all":
            jobs[rule][-1] = "/".join(kv.split("=", 1)[1] for kv in m.group(1).split(", "))
    return {r: sorted(v) for r, v in jobs.items()}


def counts(jobs):
    return {r: len(v) for r, v in jobs.items()}


@pytest.fixture(scope="module")
def base():
    return yaml.safe_load(TINY.read_text())


def edited(base, path: str, value):
    cfg = copy.deepcopy(base)
    node = cfg
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return cfg


def test_a_finished_run_has_nothing_to_do(tiny_run, base):
    assert planned(tiny_run, base) == {}


@pytest.mark.parametrize("key, value", [
    ("simulation.backend", "numpy"),  # auto is NumPy on a machine without a GPU
    ("training.threads", 2),  # weights are the same bytes on 1 or 2 threads (tests/test_determinism.py)
    ("training.device", "auto"),  # no CUDA here: the same device
    ("dials.nproc", 1),
    ("dials.container", "elsewhere/dials.sif"),  # only used with --use-apptainer
    ("refinement.threads", 2),
    ("refinement.device", "cpu"),  # no CUDA here: the same device
    ("phases.training.threads", 2),  # the phase models train on one intra-op thread whatever this is
    ("phases.training.device", "auto"),
])
def test_how_a_job_runs_reruns_nothing(tiny_run, base, key, value):
    assert planned(tiny_run, edited(base, key, value)) == {}


def test_onnx_runtime_as_the_engine_reruns_the_predictions_and_what_reads_them_only(tiny_run, base):
    jobs = planned(tiny_run, edited(base, "training.inference_engine", "onnxruntime"))
    assert jobs["predict"] == sorted(SHIFTED_PREDICTIONS + CSPAD_MATRIX_PREDICTIONS + ["cspad/peak_finder-matched"])
    assert set(jobs) == {"predict", "evaluate_predictions", "evaluation_offsets_plot", "evaluation_summary",
                         "benchmark_summary"}


def test_the_same_config_in_another_key_order_reruns_nothing(tiny_run, base):
    def reverse(node):
        return {k: reverse(node[k]) for k in reversed(list(node))} if isinstance(node, dict) else node

    assert planned(tiny_run, reverse(base)) == {}


def test_the_same_run_in_another_directory_reruns_nothing(tiny_run, base, tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy2(ROOT / "Snakefile", checkout / "Snakefile")
    for part in ("rules", "workflow", "config", "src", "resources"):
        shutil.copytree(ROOT / part, checkout / part, symlinks=True)  # copy2 keeps every mtime, as a move does
    work = tmp_path / "work"
    shutil.copytree(tiny_run, work, symlinks=True)
    assert planned(work, base, snakefile=checkout / "Snakefile", cwd=tmp_path) == {}


def test_a_figure_setting_reruns_only_its_figures(tiny_run, base):
    assert planned(tiny_run, edited(base, "overlay.gallery_frames", 2)) == {
        "overlay_gallery": [f"1ic6/{d}" for d in D]}
    assert planned(tiny_run, edited(base, "training.example_frames", 2)) == {
        "peak_examples": [f"1ic6/{d}" for d in D]}
    assert planned(tiny_run, edited(base, "evaluation.resolution_bins", 3)) == {
        "evaluation_offsets_plot": ["cspad", "shifted"], "evaluation_summary": [""]}
    assert planned(tiny_run, edited(base, "refinement.resolution_bins", 3)) == {
        "refinement_scores": ["1ic6"], "experiment_refinement_scores": ["cspad"]}


def test_growing_a_dataset_keeps_its_full_shards(tiny_run, base):
    # 3 -> 5 frames: shard 0001 (frame 2) becomes frames 2-3, shard 0002 (frame 4) is new; shard 0000 stays.
    jobs = planned(tiny_run, edited(base, "simulation.frames_per_dataset", 5))
    for rule in ("simulate", "overlay", "dials_stills_process", "dials_tables", "refine_stills"):
        assert jobs.pop(rule) == sorted(f"1ic6/{d}/{s}" for d in D for s in ("0001", "0002")), rule
    assert counts(jobs) == {"overlay_gallery": 2, "dials_scores": 1,
                            **{k: v for k, v in MATRIX_TRAINING.items() if k != "refine_stills"}}


def test_a_structure_setting_reruns_that_structure_only(tiny_run, base):
    jobs = planned(tiny_run, edited(base, "structures.ni.d_min_angstrom", 0.8))
    assert jobs == {"structure_factors": ["ni/7", "ni/8"], "structure_factor_summary": [""],
                    "benchmark_summary": [""]}


def test_a_training_setting_reruns_its_model_and_what_reads_it(tiny_run, base):
    jobs = planned(tiny_run, edited(base, "training.hit_classifier.epochs", 4))
    assert jobs == {"train_hit_classifier": [f"1ic6/{d}" for d in D], "peak_finding_summary": ["1ic6"],
                    "predict": ["cspad/hit_classifier-8keV_100mm", "shifted/hit_classifier-7keV_100mm",
                                "shifted/hit_classifier-8keV_100mm"],
                    "evaluation_summary": [""], "benchmark_summary": [""]}
    # The dispersion baseline's grid: both baselines (matrix and matched), never a CNN.
    jobs = planned(tiny_run, edited(base, "training.baseline.sigma_strong_grid", [2.0, 3.0]))
    assert jobs == {"baseline_peak_finder": [f"1ic6/{d}" for d in D], "matched_baseline_peak_finder": ["cspad"],
                    "peak_finding_summary": ["1ic6"], "peak_examples": [f"1ic6/{d}" for d in D],
                    "evaluate_predictions": ["cspad/8keV_100mm", "cspad/matched", "shifted/7keV_100mm",
                                             "shifted/8keV_100mm"],
                    "evaluation_offsets_plot": ["cspad", "shifted"], "evaluation_summary": [""],
                    "benchmark_summary": [""]}


def test_an_evaluation_setting_reruns_the_evaluation_and_the_calibration_it_sets(tiny_run, base):
    jobs = planned(tiny_run, edited(base, "evaluation.min_i_over_sigma", 4.0))
    # The CSPAD's matched simulation is calibrated to this I/sigma cut (its photon cut): that model again.
    # The refinement of the stills takes the calibrated PSF and crystal size: it runs again too.
    assert {r: jobs.pop(r) for r in ("calibrate_matched", "matched_frames", "train_matched_peak_finder",
                                     "matched_baseline_peak_finder", "predict", "benchmark_summary",
                                     *REAL_REFINEMENT)} == {
        "calibrate_matched": ["cspad"], "matched_frames": ["cspad/0000"], "train_matched_peak_finder": ["cspad"],
        "matched_baseline_peak_finder": ["cspad"], "predict": ["cspad/peak_finder-matched"],
        "benchmark_summary": [""], **REAL_REFINEMENT}
    assert jobs == {"evaluate_predictions": sorted(EVALUATIONS), "evaluation_offsets_plot": ["cspad", "shifted"],
                    "evaluation_summary": [""]}


def test_a_dials_setting_reruns_dials_and_its_readers(tiny_run, base):
    jobs = planned(tiny_run, edited(base, "dials.min_spot_size", 3))
    assert jobs.pop("dials_stills_process") == sorted(f"1ic6/{d}/{s}" for d in D for s in ("0000", "0001"))
    assert jobs.pop("dials_experiment") == ["cspad", "shifted"]
    # the CSPAD's stand-in (its cell) and calibration read its DIALS result: the matched model again (its
    # prediction, no other)
    assert jobs.pop("predict") == ["cspad/peak_finder-matched"]
    assert counts(jobs) == {"dials_tables": 4, "dials_scores": 1, "evaluate_predictions": 4,
                            "evaluation_offsets_plot": 2, "evaluation_summary": 1, "benchmark_summary": 1,
                            "matched_stand_in": 1, "matched_structure_factors": 1, "calibrate_matched": 1,
                            "matched_frames": 1, "train_matched_peak_finder": 1, "matched_baseline_peak_finder": 1,
                            **REFINEMENT, **{r: 1 for r in REAL_REFINEMENT}}


def test_a_refinement_setting_reruns_the_refinement_only(tiny_run, base):
    jobs = planned(tiny_run, edited(base, "refinement.max_spots", 100))
    assert jobs == {"refine_stills": sorted(f"1ic6/{d}/{s}" for d in D for s in ("0000", "0001")),
                    "refine_detector": [f"1ic6/{d}" for d in D], "refinement_scores": ["1ic6"],
                    **REAL_REFINEMENT, "benchmark_summary": [""]}
    # the model it assumes: the simulation's spectrum reaches every simulation and every refinement
    jobs = planned(tiny_run, edited(base, "simulation.bandwidth_frac", 0.003))
    assert counts(jobs)["refine_stills"] == 4 and jobs["refinement_scores"] == ["1ic6"]


def test_an_experiment_setting_reruns_that_experiment_only(tiny_run, base):
    jobs = planned(tiny_run, edited(base, "experiments.shifted.shift.overlay.readout_noise_adu", 1.5))
    assert jobs == {"overlay_shifted": ["shifted"], "import_frames_dxtbx": ["shifted"],
                    "dials_experiment": ["shifted"], "predict": sorted(SHIFTED_PREDICTIONS),
                    "evaluate_predictions": ["shifted/7keV_100mm", "shifted/8keV_100mm"],
                    "evaluation_offsets_plot": ["shifted"], "evaluation_summary": [""], "benchmark_summary": [""]}


def test_a_hit_gate_reruns_the_gated_peak_finders_predictions_only(tiny_run, base):
    jobs = planned(tiny_run, edited(base, "experiments.shifted.hit_gate", 0.5))
    assert jobs == {"predict": ["shifted/peak_finder-7keV_100mm", "shifted/peak_finder-8keV_100mm"],
                    "evaluate_predictions": ["shifted/7keV_100mm", "shifted/8keV_100mm"],
                    "evaluation_offsets_plot": ["shifted"], "evaluation_summary": [""], "benchmark_summary": [""]}


def test_a_physics_setting_reruns_everything_it_reaches(tiny_run, base):
    # The water jet of the matrix: every matrix background, shard and what follows; not the shifted set (its own
    # jet), not the matched frames (their jet is fitted to the CSPAD stills), not the structure factors.
    jobs = planned(tiny_run, edited(base, "water.jet_thickness_um", 6.0))
    assert jobs.pop("water_background") == list(D)
    assert jobs.pop("overlay") == sorted(f"1ic6/{d}/{s}" for d in D for s in ("0000", "0001"))
    assert counts(jobs) == {"overlay_gallery": 2, **DIALS_OF_SHARDS, **MATRIX_TRAINING}
    # The beam reaches every simulation, matrix, shifted and matched, but no structure factor.
    jobs = planned(tiny_run, edited(base, "beam.polarization_angle_deg", 10.0))
    assert "structure_factors" not in jobs and "geometry" not in jobs
    assert counts(jobs)["simulate"] == 4 and jobs["simulate_shifted"] == ["shifted"]
    assert jobs["matched_frames"] == ["cspad/0000"] and jobs["water_background"] == list(D)
    # The detector's sensor: geometry files and everything simulated in the matrix geometry.
    jobs = planned(tiny_run, edited(base, "detector.sensor_thickness_mm", 0.32))
    assert jobs["geometry"] == list(D) and counts(jobs)["simulate"] == 4 and "matched_frames" not in jobs
    # Anomalous scattering: every structure factor and everything simulated from them.
    jobs = planned(tiny_run, edited(base, "structure_factors.anomalous", False))
    assert counts(jobs)["structure_factors"] == 6 and jobs["matched_structure_factors"] == ["cspad"]
    assert counts(jobs)["simulate"] == 4 and "water_background" not in jobs


def test_a_new_energy_adds_its_datasets_and_keeps_the_others(tiny_run, base):
    jobs = planned(tiny_run, edited(base, "matrix.photon_energies_kev", [7.0, 8.0, 9.0]))
    assert jobs["simulate"] == ["1ic6/9keV_100mm/0000", "1ic6/9keV_100mm/0001"]
    assert jobs["structure_factors"] == ["1ic6/9", "ni/9", "pb/9"]
    assert jobs["train_peak_finder"] == ["1ic6/9keV_100mm"]
    # The energy / camera-length model learns the new class; nothing of 7 or 8 keV is simulated again.
    assert jobs["train_energy_distance"] == ["1ic6"] and jobs["predict"] == ["shifted/energy_distance"]
    assert jobs["evaluate_predictions"] == ["shifted/7keV_100mm", "shifted/8keV_100mm"]
    assert "overlay_shifted" not in jobs and "matched_frames" not in jobs


def test_the_benchmark_summary_covers_every_rule_with_a_benchmark(tiny_run):
    import pandas as pd

    text = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    declared = set(re.findall(r'benchmark:\s*\n\s*"results/benchmarks/([^/"]+)/', text))
    table = pd.read_csv(tiny_run / "results/benchmarks/summary.tsv", sep="\t")
    assert len(declared) >= 17 and set(table.rule) == declared


def test_outputs_are_readable_as_the_umask_says(tiny_run):
    import os

    mask = os.umask(0)
    os.umask(mask)
    modes = Counter(p.stat().st_mode & 0o777 for p in (tiny_run / "results").rglob("*") if p.is_file())
    assert set(modes) <= {0o666 & ~mask, 0o777 & ~mask}, {oct(m): n for m, n in modes.items()}
    assert not [p for p in tiny_run.rglob("*.tmp")]  # no temporary file of an atomic write survives


PHASE_MODELS = ["tiny3/cnn", "tiny3/linear", "tiny3/mlp", "tiny3/unet"]


def test_a_phase_model_setting_reruns_that_model_and_the_evaluation_only(tiny_run, base):
    assert planned(tiny_run, edited(base, "phases.models.unet.channels", 6)) == {
        "train_phase_model": ["tiny3/unet"], "evaluate_phases": ["tiny3"], "phase_figures": ["tiny3"],
        "benchmark_summary": [""]}
    assert planned(tiny_run, edited(base, "phases.training.epochs", 3)) == {
        "train_phase_model": PHASE_MODELS, "evaluate_phases": ["tiny3"], "phase_figures": ["tiny3"],
        "benchmark_summary": [""]}
    assert planned(tiny_run, edited(base, "phases.evaluation.shells", 4)) == {
        "evaluate_phases": ["tiny3"], "phase_figures": ["tiny3"], "benchmark_summary": [""]}


def test_a_phase_dataset_setting_reruns_the_phase_stage_only(tiny_run, base):
    assert planned(tiny_run, edited(base, "phases.sets.tiny3.seed", 2)) == {
        "phase_dataset": ["tiny3"], "train_phase_model": PHASE_MODELS, "evaluate_phases": ["tiny3"],
        "phase_figures": ["tiny3"], "benchmark_summary": [""]}
