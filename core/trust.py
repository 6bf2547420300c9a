"""Can a Grad-CAM map be trusted? The two checks, under one name for the jobs and the report.

- :mod:`core.faithfulness`: deletion and insertion curves of a map (Petsiuk et al., RISE, 2018) against a
  seeded random map and a centred one, and their areas.
- :mod:`core.sanity`: cascading model randomisation (Adebayo et al., "Sanity Checks for Saliency Maps",
  2018): how alike the maps stay as the layers are re-initialised from the top, by Spearman rank
  correlation and SSIM.

Both need torch and the model; neither reads the store.
"""
from core.faithfulness import (
    FILLS,
    METHODS,
    TIE_RESOLUTION,
    Curves,
    auc,
    baseline_maps,
    blur,
    centre_map,
    default_blur_sigma,
    faithfulness,
    faithfulness_many,
    perturbation_curves,
    pixel_ranks,
    random_maps,
    upsample_maps,
)
from core.sanity import Cascade, Stage, cascade_randomisation, reinitialise_, spearman, ssim, vgg_stages

__all__ = [
    "FILLS", "METHODS", "TIE_RESOLUTION", "Curves", "auc", "baseline_maps", "blur", "centre_map",
    "default_blur_sigma", "faithfulness", "faithfulness_many", "perturbation_curves", "pixel_ranks",
    "random_maps", "upsample_maps",
    "Cascade", "Stage", "cascade_randomisation", "reinitialise_", "spearman", "ssim", "vgg_stages",
]
