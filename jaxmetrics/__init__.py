"""jaxmetrics: evaluation metrics for generative image models, in JAX.

The FID Inception-v3 as a Flax module that reproduces the TensorFlow reference network
(:mod:`jaxmetrics.inception`), its weights registry (:mod:`jaxmetrics.weights`) and the metrics
built on it. What users call is re-exported here; other modules are free to change.
"""

from jaxmetrics import clip
from jaxmetrics import inception
from jaxmetrics import weights
from jaxmetrics._errors import CheckpointError
from jaxmetrics._errors import InputError
from jaxmetrics._errors import JaxmetricsError
from jaxmetrics._errors import WeightsError
from jaxmetrics.inception import features
from jaxmetrics.inception import load_params
from jaxmetrics.inception_score import InceptionScoreState
from jaxmetrics.inception_score import contiguous_split
from jaxmetrics.inception_score import inception_score
from jaxmetrics.kid import kid
from jaxmetrics.reconstruction import ReconstructionState
from jaxmetrics.reconstruction import psnr
from jaxmetrics.reconstruction import reconstruction_error
from jaxmetrics.reconstruction import ssim
from jaxmetrics.semantic import ClipScore
from jaxmetrics.semantic import SemanticSimilarity
from jaxmetrics.semantic import clip_score
from jaxmetrics.semantic import semantic_similarity

__version__ = "0.1.0.dev0"

__all__ = [
    "CheckpointError",
    "ClipScore",
    "InputError",
    "JaxmetricsError",
    "ReconstructionState",
    "SemanticSimilarity",
    "WeightsError",
    "InceptionScoreState",
    "clip",
    "clip_score",
    "contiguous_split",
    "features",
    "inception",
    "inception_score",
    "kid",
    "load_params",
    "psnr",
    "reconstruction_error",
    "semantic_similarity",
    "ssim",
    "weights",
]
