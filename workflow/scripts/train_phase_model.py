from braggflow.ml.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before torch is imported: the same kernels on every AVX2 machine (braggflow.ml.determinism)

from braggflow.logs import logged
from braggflow.phases.train import train_phase_model
from braggflow.settings import PhaseFitSettings

with logged(snakemake.log[0]) as log:
    import torch

    torch.set_num_threads(snakemake.threads)
    p = snakemake.params.training
    o = snakemake.output
    train_phase_model(snakemake.input[0], snakemake.wildcards.phase_model, p["arguments"],
                      PhaseFitSettings.from_params(p["fit"]), snakemake.params.seed, weights=o.weights, card=o.card,
                      history=o.history, device_name=snakemake.config["phases"]["training"]["device"], log=log)
