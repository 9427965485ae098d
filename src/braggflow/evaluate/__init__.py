"""The peak-position evaluator: peaks found on experimental frames by a CNN, by the conventional dispersion finder
and by DIALS' own spot finder, against (a) the truth where the frames are simulated and (b) the spot positions
predicted from the DIALS-indexed crystal of each frame: reference ``dials`` at the geometry DIALS used, and
``dials_predicted_geometry`` at the photon energy and camera length the energy / camera-length model predicts
(so a wrong energy or distance shows up as offsets, as in diffBragg's prediction-offset plots).

Offsets are found minus reference position, in pixels, split in the detector plane into a radial component
(along the direction away from the beam axis, positive outward) and a transverse one (beam x radial);
the tables give signed medians per resolution bin (bins of equal reciprocal-space volume) and overall.

Modules: ``matching`` (found against reference, offsets), ``references`` (finders and references), ``run`` (one
prediction file, the classifiers), ``summary`` (summaries); the figures are ``braggflow.figures.evaluation``; the
stills predictor is ``braggflow.stills``. The evaluator does not import torch.
"""

from .matching import Found, Reference, offset_components, score_frame
from .references import cnn_found, dials_frames, dials_reference, dispersion_found, truth_reference
from .run import classifier_table, evaluate_predictions
from .summary import offsets_by_resolution, rank_models, read_tables, resolution_edges, summarize

__all__ = ["Found", "Reference", "classifier_table", "cnn_found", "dials_frames", "dials_reference",
           "dispersion_found", "evaluate_predictions", "offset_components", "offsets_by_resolution", "rank_models",
           "read_tables", "resolution_edges", "score_frame", "summarize", "truth_reference"]
