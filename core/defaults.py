"""Defaults and limits that the command-line help states, importable without torch.

``python -m jobs.<name> --help`` builds its parser from these names only, so it answers in a fraction of a
second instead of loading torch first; the modules that do the work import the same names from here.
"""
from __future__ import annotations

# ReLU after conv5_4, the last activation before VGG-19's final max-pool: 14x14 at 224 px.
DEFAULT_CAM_LAYER = "features.35"
# The smallest input VGG-19's five max-pools leave a cell of (32 / 2**5 = 1).
MIN_IMAGE_SIZE = 32
# What deleted pixels become in the deletion curve (core.faithfulness): the data set's mean, or the blurred image.
FILLS = ("mean", "blur")
# The arithmetic of the forward pass (core.engine.Precision): float32, or bfloat16 / float16 autocast.
PRECISIONS = ("fp32", "bf16", "fp16")
# Why Score-CAM is never a default (core.cam_methods; the help of --cam-methods says it).
SCORECAM_COST = (
    "Score-CAM runs one forward pass of the whole network per channel of the CAM layer and per image "
    "(512 at VGG-19's features.35: about 500 times the cost of inference); it is never run by default"
)
