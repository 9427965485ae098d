from braggflow.experiments import import_hdf5
from braggflow.logs import logged

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    if len(snakemake.input) != 1:
        raise ValueError(f"the hdf5 reader takes one file per experiment, got {list(snakemake.input)}")
    import_hdf5(snakemake.output.frames, snakemake.output.nxmx, snakemake.input[0], p.dataset_path, p.geometry,
                p.adu_per_photon, untrusted_border_px=p.border, log=log)
