from pathlib import Path

from snakemake.utils import min_version, validate

from braggflow.config import check_config

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# Name the wrong key and what is allowed; then Snakemake's check, which also fills in defaults.
check_config(config, Path(workflow.basedir) / "config/config.schema.yaml")
validate(config, "config/config.schema.yaml")


include: "rules/common.smk"
include: "rules/structures.smk"
include: "rules/backgrounds.smk"
include: "rules/simulate.smk"
include: "rules/overlays.smk"
include: "rules/processing.smk"
include: "rules/training.smk"
include: "rules/experiments.smk"
include: "rules/matched.smk"
include: "rules/refinement.smk"
include: "rules/phases.smk"


rule all:
    input:
        all_targets(),
    default_target: True
