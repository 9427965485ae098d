"""braggflow: serial-crystallography stills from crystal structures, as a reproducible workflow.

The package holds the physics and ML; it imports and tests without Snakemake.
"""

__version__ = "0.1.0"
