# Dataset matrix, path helpers, input functions and wildcard constraints shared by every stage.
import functools
import importlib.util
import os

# Jobs import braggflow from this checkout whatever environment runs them (conda envs, containers, SLURM jobs),
# and the DIALS-side programs find theirs through BRAGGFLOW_WORKFLOW. Environment, not params: a checkout in
# another directory computes the same bytes, so it must not rerun anything. (Set here, not required from the
# user, so no envvars: directive.)
_SRC, _PATH_VAR, _WORKFLOW_VAR = os.path.join(workflow.basedir, "src"), "PYTHONPATH", "BRAGGFLOW_WORKFLOW"
os.environ[_PATH_VAR] = os.pathsep.join(p for p in (_SRC, os.environ.get(_PATH_VAR, "")) if p)
os.environ[_WORKFLOW_VAR] = workflow.basedir
from braggflow.beam import Beam
from braggflow.config import check_phase_sets, check_structure_files
from braggflow.draws import spectrum_rel_sigma
from braggflow.geometry import dataset_geometry
from braggflow.matrix import DATASET_RE, ENERGY_LABEL_RE, energies, expand_matrix
from braggflow.overlay import OverlaySettings
from braggflow.phases.dataset import resolve_cif
from braggflow.phases.models import KINDS as PHASE_MODELS
from braggflow.settings import (
    EvaluationSettings,
    PhaseEvaluationSettings,
    PhaseFitSettings,
    PhaseSetSettings,
    TrainingSettings,
    canonical,
)
from braggflow.sf import D_MIN_MARGIN
from braggflow.sf import sf_d_min_angstrom as structure_factor_d_min
from braggflow.shards import SimulationSettings, frame_indices

check_structure_files(config)
check_phase_sets(config)

DATASETS = expand_matrix(config)  # name -> Dataset, e.g. "7keV_250mm"
ENERGIES = energies(config)  # label -> keV, e.g. "7" -> 7.0
STRUCTURES = sorted(config["structures"])  # names, not file order: the same config in another order reruns nothing


wildcard_constraints:
    dataset=DATASET_RE,
    energy=ENERGY_LABEL_RE,
    structure="[A-Za-z0-9][A-Za-z0-9_-]*",
    shard=r"\d{4}",
    phase_set="[A-Za-z0-9][A-Za-z0-9_-]*",
    phase_model="|".join(PHASE_MODELS),


def structure_file(wildcards):
    return config["structures"][wildcards.structure]["file"]


def geometry_of(dataset_name):
    return dataset_geometry(config, DATASETS[dataset_name])


def sf_d_min_angstrom(structure, energy):
    """The structure's or the section's d_min, else what the camera lengths of this energy record."""
    fixed = config["structures"][structure].get("d_min_angstrom")
    fixed = config["structure_factors"]["d_min_angstrom"] if fixed is None else fixed
    corners = [geometry_of(d.name).d_min_angstrom() for d in DATASETS.values() if d.energy == energy]
    return structure_factor_d_min(fixed, corners)


def sf_mtz(structure, energy):
    return f"results/structure_factors/{structure}/{energy}keV.mtz"


def matrix_sf_structures():
    """Structures with structure factors at the matrix energies: all but those only simulated in an experiment's
    own geometry (experiments.<x>.matched.structure, not in simulation.structures)."""
    matched_only = {e.matched["structure"] for e in EXPERIMENTS.values() if e.matched} - set(SIM_STRUCTURES)
    return [s for s in STRUCTURES if s not in matched_only]


def all_sf_mtz():
    return [sf_mtz(s, e) for s in matrix_sf_structures() for e in ENERGIES]


SIM = config["simulation"]
SIM_STRUCTURES = SIM["structures"] if SIM["structures"] is not None else STRUCTURES
N_SHARDS = -(-SIM["frames_per_dataset"] // SIM["frames_per_shard"])


def check_simulation_structures():
    unknown = [s for s in SIM_STRUCTURES if s not in config["structures"]]
    if unknown:
        raise ValueError(f"config key 'simulation.structures': {unknown} not among structures {STRUCTURES}")


check_simulation_structures()


def shard_frames(shard):
    """(first, stop) frame indices of a shard; frames never depend on the shard size."""
    frames = frame_indices(int(shard), SIM["frames_per_shard"], SIM["frames_per_dataset"])
    return frames.start, frames.stop


def shard_names():
    return [f"{i:04d}" for i in range(N_SHARDS)]


def simulation_gpus():
    """1 where the simulator will run on CuPy in the job's environment, else 0 (the CPU path never imports CuPy).
    Under auto the job's environment decides: with conda deployment that is envs/braggflow-gpu.yaml (CuPy), else
    Snakemake's own environment, where an installed CuPy is found without importing it. The job logs which
    backend ran and why (simulator.resolve_backend)."""
    backend = SIM["backend"]
    if backend == "cupy":
        return 1
    if backend == "auto":
        from snakemake.settings.types import DeploymentMethod
        import importlib.util

        if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
            return 1
        return int(importlib.util.find_spec("cupy") is not None)
    return 0


def simulation_conda_env():
    """The CuPy environment where the simulator may use a GPU, else the CPU one."""
    return "../envs/braggflow.yaml" if SIM["backend"] == "numpy" else "../envs/braggflow-gpu.yaml"


def simulated_shards(structure, dataset):
    return expand(
        "results/simulated/{structure}/{dataset}/shard_{shard}.h5",
        structure=structure,
        dataset=dataset,
        shard=shard_names(),
    )


def overlay_shards(structure, dataset):
    return expand(
        "results/overlays/{structure}/{dataset}/shard_{shard}.h5",
        structure=structure,
        dataset=dataset,
        shard=shard_names(),
    )


def nominal_fluence_per_m2():
    return Beam.from_config(config["beam"]).fluence_per_m2


# What rules record of each section (braggflow.settings): the values that make their outputs' bytes, in the
# settings' own order, so that a figure setting, a thread count or the order of keys in a file reruns nothing.
BEAM = Beam.params(config["beam"])
SIMULATION = SimulationSettings.params(SIM)
TRAINING = TrainingSettings.from_config(config["training"])
EVALUATION = EvaluationSettings.from_config(config["evaluation"])


def overlay_params(section):
    return OverlaySettings.from_config(section).params()


@functools.cache
def structure_symmetry(structure):
    """(space group, cell) read from the structure file: the known symmetry DIALS indexes with."""
    from braggflow.structures import read_structure

    model = read_structure(config["structures"][structure]["file"])
    return model.spacegroup_hm, list(model.cell)


def dials_phil(structure):
    from braggflow.dials import DialsSettings, stills_phil

    spacegroup, cell = structure_symmetry(structure)
    settings = DialsSettings.from_config(config["dials"])
    return stills_phil(spacegroup, cell, config["overlay"]["adu_per_photon"], settings)


def dials_tables_of(structure):
    return expand(
        "results/dials/{structure}/{dataset}/shard_{shard}/tables.h5",
        structure=structure,
        dataset=DATASETS,
        shard=shard_names(),
    )


def dials_exports(structure, dataset):
    return expand(
        "results/dials/{structure}/{dataset}/shard_{shard}/export.npz",
        structure=structure,
        dataset=dataset,
        shard=shard_names(),
    )


# ---------------------------------------------------------------- refinement (rules/refinement.smk)
REFINEMENT_PRIOR_KEYS = (
    "crystal_shape",
    "ncells",
    "mosaic_spread_deg",
    "mosaic_domains",
    "mosaic_model",
    "spectrum_shape",
    "bandwidth_frac",
    "spectrum_samples",
    "oversample",
    "sensor_layers",
)


def refinement_params():
    """What makes a refinement's bytes: the section's fitting settings (RefinementSettings: not enabled, device,
    threads or the figures' bins), the model it assumes (the simulation's crystal shape, size, mosaic, spectrum
    and oversampling, and the beam), the noise model, and the structure's symmetry."""
    from braggflow.refine.shard import RefinementSettings

    return dict(
        refinement=RefinementSettings.from_config(config["refinement"]).params(),
        prior={k: canonical(SIM[k]) for k in REFINEMENT_PRIOR_KEYS},
        beam=BEAM,
        noise={k: config["overlay"][k] for k in ("adu_per_photon", "readout_noise_adu", "saturation_adu")},
        spacegroup=lambda wc: structure_symmetry(wc.structure)[0],
        cell=lambda wc: structure_symmetry(wc.structure)[1],
    )


def experiment_symmetry(experiment):
    """(space group, cell) an experiment's stills are refined in: its DIALS settings' known symmetry, else its
    matched structure's, else its structure's."""
    e = EXPERIMENTS[experiment]
    structure = e.matched["structure"] if e.matched else e.structure
    spacegroup, cell = e.dials["space_group"], e.dials["unit_cell"]
    if spacegroup is None or cell is None:
        known = structure_symmetry(structure)
        spacegroup, cell = spacegroup or known[0], cell or known[1]
    return spacegroup, [float(v) for v in cell]


def experiment_refinement_prior(experiment):
    """The model an experiment's stills are refined with: its matched simulation's crystal, spectrum, PSF and
    beam (their calibrated values come from the calibration file, an input), else the simulation section's; and
    the readout noise in photons of its frames (the matched overlay's; 0 without one)."""
    e = EXPERIMENTS[experiment]
    if e.matched:
        sim, beam = matched_section_of(experiment, "simulation"), matched_section_of(experiment, "beam")
        overlay = matched_section_of(experiment, "overlay")
        readout = float(overlay["readout_noise_adu"]) / float(overlay["adu_per_photon"])
    else:
        sim, beam, readout = SIM, config["beam"], 0.0
    return dict(
        simulation={k: canonical(sim[k]) for k in REFINEMENT_PRIOR_KEYS + ("psf_fwhm_um",)},
        beam=Beam.params(beam),
        readout_noise_photons=readout,
    )


def experiment_refinement_params():
    """What makes an experiment's refinement's bytes: the section's fitting settings, its model
    (experiment_refinement_prior) and its symmetry."""
    from braggflow.refine.shard import RefinementSettings

    return dict(
        refinement=RefinementSettings.from_config(config["refinement"]).params(),
        prior=lambda wc: experiment_refinement_prior(wc.experiment),
        spacegroup=lambda wc: experiment_symmetry(wc.experiment)[0],
        cell=lambda wc: experiment_symmetry(wc.experiment)[1],
    )


def experiment_refinement_calibration(experiment):
    """The matched simulation's calibration, where the experiment has one (its PSF and crystal size)."""
    return matched_calibration_input(experiment) if EXPERIMENTS[experiment].matched else []


def refined_experiments():
    """The experiments whose stills are refined: every file experiment (real stills)."""
    if not config["refinement"]["enabled"]:
        return []
    return [x for x, e in EXPERIMENTS.items() if e.kind == "file"]


def refinement_gpus():
    """1 where the refinement will run on CUDA (refinement.device; auto: a CUDA build of torch is installed)."""
    device = config["refinement"]["device"]
    return int(device == "cuda") if device != "auto" else training_gpus(device="auto")


def refinement_conda_env():
    return "../envs/braggflow.yaml" if config["refinement"]["device"] == "cpu" else "../envs/braggflow-gpu.yaml"


def refined_tables(structure):
    return expand(
        "results/refined/{structure}/{dataset}/shard_{shard}/stills.tsv",
        structure=structure,
        dataset=DATASETS,
        shard=shard_names(),
    )


def refinement_targets():
    if not config["refinement"]["enabled"]:
        return []
    return [f"results/refined/{s}/scores.tsv" for s in SIM_STRUCTURES] + [
        f"results/refined/experiments/{x}/offsets_by_resolution.tsv" for x in refined_experiments()
    ]


def training_gpus(device=None):
    """1 where training will run on CUDA, else 0. For `auto`: a CUDA build of torch is installed (looked up
    without importing torch, which takes seconds at every parse)."""
    device = config["training"]["device"] if device is None else device
    if device != "auto":
        return int(device == "cuda")
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return 0
    lib = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    return int(os.path.exists(os.path.join(lib, "libtorch_cuda.so")))


def training_conda_env():
    return "../envs/braggflow.yaml" if config["training"]["device"] == "cpu" else "../envs/braggflow-gpu.yaml"


def model_file(structure, dataset, name):
    return f"results/models/{structure}/{dataset}/{name}"


def per_dataset_models(structure, name):
    return [model_file(structure, d, name) for d in DATASETS]


def training_targets():
    """Every table, figure and model card of the training stage."""
    return [
        f
        for s in SIM_STRUCTURES
        for f in [
            f"results/metrics/{s}/peak_finding.tsv",
            f"results/metrics/{s}/learning_curves.png",
            f"results/metrics/{s}/energy_distance.tsv",
            f"results/metrics/{s}/energy_distance_confusion.png",
            f"results/metrics/{s}/energy_distance_learning_curve.png",
        ]
        + [f"results/metrics/{s}/{d}/examples.png" for d in DATASETS]
    ]


# ---------------------------------------------------------------- phase retrieval (rules/phases.smk)


def phase_set(name):
    return PhaseSetSettings.from_config(config["phases"]["sets"][name], f"phases.sets.{name}")


def phase_cifs(wildcards):
    """The set's CIF files (dans:<Name> resolved to the installed package's copy), by name."""
    return {f"cif{i}": str(resolve_cif(c)) for i, c in enumerate(phase_set(wildcards.phase_set).cifs)}


def phase_dataset_params(wildcards):
    return phase_set(wildcards.phase_set).params()


def phase_training_params(wildcards):
    """What makes one model's weights: the shared optimisation and that model's own settings (not device or
    threads, and not the other models')."""
    return dict(
        fit=PhaseFitSettings.from_config(config["phases"]["training"]).params(),
        arguments=canonical(config["phases"]["models"][wildcards.phase_model]),
    )


def phase_models(phase_set_name, what):
    suffix = {"weights": "pt", "card": "json", "history": "history.tsv"}[what]
    return [f"results/phases/{phase_set_name}/models/{m}.{suffix}" for m in PHASE_MODELS]


def phase_gpus():
    return training_gpus(config["phases"]["training"]["device"])


def phase_conda_env():
    return "../envs/braggflow.yaml" if config["phases"]["training"]["device"] == "cpu" else "../envs/braggflow-gpu.yaml"


def phase_targets():
    if not config["phases"]["enabled"]:
        return []
    files = ["loss_table.tsv", "shells.tsv", "samples.tsv", "learning_curves.png", "shells.png", "density.png"]
    return [f"results/phases/{s}/evaluation/{f}" for s in config["phases"]["sets"] for f in files]


def all_targets():
    per_dataset = [
        "results/geometry/{dataset}/geometry.json",
        "results/geometry/{dataset}/{dataset}.geom",
        "results/backgrounds/{dataset}/water.h5",
        "results/backgrounds/{dataset}/water.png",
    ]
    return (
        all_sf_mtz()
        + ["results/structure_factors/summary.tsv", "results/structure_factors/resolution_shells.png"]
        + expand(per_dataset, dataset=DATASETS)
        + [f for s in SIM_STRUCTURES for d in DATASETS for f in overlay_shards(s, d)]
        + expand("results/overlays/{structure}/{dataset}/gallery.png", structure=SIM_STRUCTURES, dataset=DATASETS)
        + expand("results/dials/{structure}/scores.tsv", structure=SIM_STRUCTURES)
        + ["results/benchmarks/summary.tsv"]
        + training_targets()
        + refinement_targets()
        + experiment_targets()
        + phase_targets()
    )


def benchmark_files():
    """The benchmark file of every job that declares one (their rules' outputs, so the summary waits for all)."""
    B = "results/benchmarks"
    files = [f"{B}/structure_factors/{s}/{e}keV.tsv" for s in matrix_sf_structures() for e in ENERGIES]
    files += expand(f"{B}/water_background/{{dataset}}.tsv", dataset=DATASETS)
    for stage in ("simulate", "overlay", "dials"):
        files += expand(
            f"{B}/{stage}/{{structure}}/{{dataset}}/shard_{{shard}}.tsv",
            structure=SIM_STRUCTURES,
            dataset=DATASETS,
            shard=shard_names(),
        )
    if config["refinement"]["enabled"]:
        files += expand(
            f"{B}/refine_stills/{{structure}}/{{dataset}}/shard_{{shard}}.tsv",
            structure=SIM_STRUCTURES,
            dataset=DATASETS,
            shard=shard_names(),
        )
        files += expand(
            f"{B}/refine_detector/{{structure}}/{{dataset}}.tsv", structure=SIM_STRUCTURES, dataset=DATASETS
        )
        files += [f"{B}/refine_experiment/{x}.tsv" for x in refined_experiments()]
    for stage in ("train_peak_finder", "train_hit_classifier", "baseline_peak_finder"):
        files += expand(f"{B}/{stage}/{{structure}}/{{dataset}}.tsv", structure=SIM_STRUCTURES, dataset=DATASETS)
    files += expand(f"{B}/train_energy_distance/{{structure}}.tsv", structure=SIM_STRUCTURES)
    for x, e in EXPERIMENTS.items():
        if e.kind == "shifted_simulation":
            files.append(f"{B}/simulate_shifted/{x}.tsv")
        files.append(f"{B}/dials_experiment/{x}.tsv")
        kinds = ("peak_finder", "hit_classifier", "energy_distance")
        files += [f"{B}/predict/{x}/{m}.tsv" for m in experiment_models(x, kinds)]
    for x in MATCHED:
        stages = ["matched_structure_factors", "train_matched_peak_finder", "matched_baseline_peak_finder"]
        stages += ["matched_outlier_pixels"] if matched_outlier_input(x) else []
        stages += ["calibrate_matched"] if matched_calibration_input(x) else []
        files += [f"{B}/{stage}/{x}.tsv" for stage in stages]
        files += [f"{B}/matched_frames/{x}/shard_{s}.tsv" for s in matched_shard_names(x)]
    if config["phases"]["enabled"]:
        for name in config["phases"]["sets"]:
            files += [f"{B}/phase_dataset/{name}.tsv", f"{B}/evaluate_phases/{name}.tsv"]
            files += [f"{B}/train_phase_model/{name}/{m}.tsv" for m in PHASE_MODELS]
    return files


# ---------------------------------------------------------------- experimental inputs (rules/experiments.smk)
from braggflow.config import load_schema
from braggflow.experiments import experiment_specs

# By name (a mapping's order in the config file makes no output).
EXPERIMENTS = dict(
    sorted(
        experiment_specs(
            config, DATASETS, load_schema(os.path.join(workflow.basedir, "config/config.schema.yaml"))
        ).items()
    )
)
NEVER = "(?!x)x"  # a wildcard pattern that matches nothing (an empty set of experiments)


def experiments_pattern(kinds=None, readers=None):
    names = [
        n
        for n, e in EXPERIMENTS.items()
        if (kinds is None or e.kind in kinds) and (readers is None or e.kind != "file" or e.reader in readers)
    ]
    return "|".join(names) if names else NEVER


def shifted_geometry_of(experiment):
    from braggflow.experiments import shifted_geometry

    e = EXPERIMENTS[experiment]
    return shifted_geometry(geometry_of(e.like), e.shift)


def shifted_section(experiment, section):
    from braggflow.experiments import shifted_section

    return shifted_section(config[section], EXPERIMENTS[experiment].shift[section])


def experiment_file(experiment):
    """The shifted simulation's NXmx file (frames, geometry and truth)."""
    return f"results/experiments/{experiment}/{experiment}.h5"


def experiment_frames(experiment):
    return f"results/experiments/{experiment}/frames.h5"


def dials_inputs(experiment):
    """What DIALS reads: the input files themselves, the shifted set's NXmx, or the NXmx an HDF5 input became."""
    e = EXPERIMENTS[experiment]
    if e.kind == "shifted_simulation":
        return [experiment_file(experiment)]
    if e.reader == "hdf5":
        return [f"results/experiments/{experiment}/dials_input.h5"]
    return list(e.files)


def experiment_gain(experiment):
    """ADU per photon of what DIALS reads (HDF5 inputs are converted to photons first)."""
    e = EXPERIMENTS[experiment]
    if e.kind == "shifted_simulation":
        return float(shifted_section(experiment, "overlay")["adu_per_photon"])
    return 1.0 if e.reader == "hdf5" else float(e.adu_per_photon or 1.0)


def experiment_dials_phil(experiment):
    from braggflow.dials import stills_phil
    from braggflow.experiments import experiment_dials_settings

    e = EXPERIMENTS[experiment]
    spacegroup, cell = structure_symmetry(e.structure)
    settings = experiment_dials_settings(config["dials"], e)
    return stills_phil(
        e.dials["space_group"] or spacegroup, e.dials["unit_cell"] or cell, experiment_gain(experiment), settings
    )


def experiment_models(experiment, kinds=("peak_finder", "hit_classifier")):
    """Model names of an experiment: <kind>-<dataset> per listed dataset (predict_with matrix or both),
    peak_finder-matched (matched or both), and energy_distance where it applies."""
    e = EXPERIMENTS[experiment]
    names = []
    if e.predict_with in ("matrix", "both"):
        names += [f"{k}-{d}" for k in kinds if k != "energy_distance" for d in e.models]
    if "peak_finder" in kinds and e.predict_with in ("matched", "both"):
        names.append("peak_finder-matched")
    if "energy_distance" in kinds and e.energy_distance:
        names.append("energy_distance")
    return names


def model_paths(experiment, model):
    """(weights, card, and the ONNX file where ONNX Runtime runs it) of a model name of an experiment's
    structure."""
    structure = EXPERIMENTS[experiment].structure
    if model == "peak_finder-matched":
        stem = matched_file(experiment, "peak_finder")
    elif model == "energy_distance":
        stem = f"results/models/{structure}/energy_distance"
    else:
        kind, dataset = model.split("-", 1)
        stem = model_file(structure, dataset, kind)
    paths = {"weights": f"{stem}.pt", "card": f"{stem}.json"}
    if config["training"]["inference_engine"] == "onnxruntime":
        paths["onnx"] = f"{stem}.onnx"
    return paths


def hit_gate_of(experiment, model):
    """The hit probability below which a matrix peak finder skips a frame of this experiment, or None."""
    kind, _, dataset = model.partition("-")
    if kind != "peak_finder" or dataset == "matched":
        return None
    return EXPERIMENTS[experiment].hit_gate


def hit_gate_input(experiment, model):
    """The same dataset's hit-classifier prediction, where it gates this peak finder (experiments.<name>.hit_gate)."""
    if hit_gate_of(experiment, model) is None:
        return {}
    return {"hits": prediction_file(experiment, f"hit_classifier-{model.partition('-')[2]}")}


def prediction_file(experiment, model):
    return f"results/predictions/{experiment}/{model}/{experiment}_probability_pred.h5"


def energy_distance_prediction(experiment):
    e = EXPERIMENTS[experiment]
    return [prediction_file(experiment, "energy_distance")] if e.energy_distance else []


def truth_source(experiment):
    return [experiment_file(experiment)] if EXPERIMENTS[experiment].kind == "shifted_simulation" else []


def hit_frames_param(experiment):
    """A file input's hit labels as the rule records them (a list, "dials_indexed" or None)."""
    labels = EXPERIMENTS[experiment].hit_frames
    return list(labels) if isinstance(labels, tuple) else labels


def dials_hit_labels(experiment):
    """The DIALS export whose indexing labels an experiment's hits (hit_frames: dials_indexed)."""
    if EXPERIMENTS[experiment].hit_frames == "dials_indexed":
        return [f"results/experiments/{experiment}/dials/export.npz"]
    return []


def evaluation_tables(experiment):
    return [
        f"results/evaluation/{experiment}/{m}/{t}.tsv"
        for m in experiment_models(experiment, ("peak_finder",))
        for t in ("frames", "offsets")
    ]


def experiment_targets():
    if not EXPERIMENTS:
        return []
    return [
        "results/evaluation/summary.tsv",
        "results/evaluation/summary.png",
        "results/evaluation/offsets_by_resolution.tsv",
        "results/evaluation/classifiers.tsv",
    ] + [
        f
        for x in EXPERIMENTS
        for f in [f"results/evaluation/{x}/offsets.png"]
        + [prediction_file(x, m) for m in experiment_models(x, ("peak_finder", "hit_classifier", "energy_distance"))]
    ]


# ---------------------------------------------------------------- matched (sim-to-real) training, rules/matched.smk
MATCHED = [x for x, e in EXPERIMENTS.items() if e.matched]


def matched_pattern():
    return "|".join(MATCHED) if MATCHED else NEVER


def matched_file(experiment, name):
    return f"results/matched/{experiment}/{name}"


def matched_shard_names(experiment):
    m = EXPERIMENTS[experiment].matched
    return [f"{i:04d}" for i in range(-(-m["frames"] // m["frames_per_shard"]))]


def matched_shards(experiment):
    return [matched_file(experiment, f"shard_{s}.h5") for s in matched_shard_names(experiment)]


def matched_shard_frames(experiment, shard):
    m = EXPERIMENTS[experiment].matched
    frames = frame_indices(int(shard), m["frames_per_shard"], m["frames"])
    return frames.start, frames.stop


def matched_structure_file(experiment):
    """The structure a matched model simulates: the workflow's stand-in, or a configured structure's file."""
    m = EXPERIMENTS[experiment].matched
    if m["stand_in"] is not None:
        return matched_file(experiment, "stand_in.pdb")
    return config["structures"][m["structure"]]["file"]


def matched_d_min_angstrom(experiment):
    m = EXPERIMENTS[experiment].matched
    if m["stand_in"] is not None:
        return m["stand_in"]["d_min_angstrom"]
    return config["structures"][m["structure"]].get("d_min_angstrom")


STAND_INS = [x for x in MATCHED if EXPERIMENTS[x].matched["stand_in"] is not None]


def stand_in_pattern():
    return "|".join(STAND_INS) if STAND_INS else NEVER


def stand_in_params(experiment):
    """What makes a stand-in's bytes: its composition, space group (its own or the experiment's DIALS one), the
    given cell (or none: the DIALS mean cell, an input), B and seed."""
    from braggflow.experiments import stand_in_space_group

    e = EXPERIMENTS[experiment]
    si = e.matched["stand_in"]
    return {
        "residues": si["residues"],
        "ions": canonical(si["ions"]),
        "space_group": stand_in_space_group(e.dials, si),
        "unit_cell": si["unit_cell"],
        "b_iso_angstrom2": si["b_iso_angstrom2"],
        "seed": si["seed"],
    }


def stand_in_dials_input(experiment):
    """DIALS' result where the stand-in takes its cell from the indexed frames."""
    if EXPERIMENTS[experiment].matched["stand_in"]["unit_cell"] is None:
        return [f"results/experiments/{experiment}/dials/export.npz"]
    return []


def matched_section_of(experiment, section):
    from braggflow.experiments import matched_section

    return matched_section(config, EXPERIMENTS[experiment].matched, section)


def matched_outlier_input(experiment):
    """The lone-pixel measurement of the experiment's frames, where its matched frames may draw outliers from it:
    set so by hand, or left to the calibration."""
    m = EXPERIMENTS[experiment].matched
    if m["outliers_from_frames"] or (m["outliers_from_frames"] is None and m["calibrate"]):
        return [matched_file(experiment, "outlier_pixels.json")]
    return []


def matched_calibration_input(experiment):
    """The calibration of the experiment's matched simulation, where it is calibrated."""
    return [matched_file(experiment, "calibration.json")] if EXPERIMENTS[experiment].matched["calibrate"] else []


def matched_hand_set(experiment):
    """The calibrated keys the experiment's matched section sets by hand: the calibration keeps them."""
    from braggflow.calibration import CALIBRATED

    m = EXPERIMENTS[experiment].matched
    out = {}
    for key in CALIBRATED:
        section, _, name = key.rpartition(".")
        value = m[section].get(name) if section else m[name]
        if value is not None:
            out[key] = canonical(value)  # the same values in another key order are the same params
    return out


def matched_jet_thickness_m(experiment):
    """The matched frames' jet; None where the calibration fits it (calibration.json, an input, has it)."""
    from braggflow.experiments import matched_jet_thickness_m

    m = EXPERIMENTS[experiment].matched
    if m["calibrate"] and m["jet_thickness_um"] is None:
        return None
    return matched_jet_thickness_m(config, m)


def matched_training(experiment):
    """training with the experiment's peak_finder overrides."""
    return TrainingSettings.with_peak_finder(config["training"], EXPERIMENTS[experiment].matched["peak_finder"])


def baseline_of(experiment, dataset):
    """The dispersion finder's tuned settings: the matched model's own, or the matrix dataset's."""
    if dataset == "matched":
        return matched_file(experiment, "baseline_peaks.json")
    return model_file(EXPERIMENTS[experiment].structure, dataset, "baseline_peaks.json")
