from braggflow.beam import Beam
from braggflow.geometry import Geometry
from braggflow.logs import logged
from braggflow.figures.water import plot_background
from braggflow.formats.background import write_background
from braggflow.water import water_image

with logged(snakemake.log[0]) as log:
    geometry = Geometry.from_dict(snakemake.params.geometry)
    bg = water_image(geometry, Beam.from_config(snakemake.params.beam), snakemake.params.jet_thickness_m,
                     snakemake.input.table)
    write_background(snakemake.output.h5, bg)
    plot_background(snakemake.output.png, bg, title=f"water background {snakemake.params.name}")
    log.info("%s: max %.3g, mean %.3g photons/pixel; q %.3f-%.3f 1/A", snakemake.params.name,
             bg.photons.max(), bg.photons[~bg.mask].mean(), bg.q_inv_angstrom.min(), bg.q_inv_angstrom.max())
