"""jaxmetrics: evaluation metrics for generative image models, in JAX.

The FID Inception-v3 as a Flax module that reproduces the TensorFlow reference network
(:mod:`jaxmetrics.inception`), its weights registry (:mod:`jaxmetrics.weights`) and the metrics
built on it. What users call is re-exported here; other modules are free to change.
"""

from jaxmetrics import clip
from jaxmetrics import extract
from jaxmetrics import inception
from jaxmetrics import weights
from jaxmetrics._errors import CheckpointError
from jaxmetrics._errors import InputError
from jaxmetrics._errors import JaxmetricsError
from jaxmetrics._errors import WeightsError
from jaxmetrics.evaluation import Evaluator
from jaxmetrics.evaluation import evaluate
from jaxmetrics.evaluation import fid
from jaxmetrics.evaluation import save_statistics
from jaxmetrics.frechet import FrechetReference
from jaxmetrics.frechet import frechet_distance
from jaxmetrics.frechet import frechet_distance_from_features
from jaxmetrics.inception import features
from jaxmetrics.inception import load_params
from jaxmetrics._inception_score import InceptionScoreState
from jaxmetrics._inception_score import contiguous_split
from jaxmetrics._inception_score import inception_score
from jaxmetrics._kid import kid
from jaxmetrics.reconstruction import ReconstructionState
from jaxmetrics.reconstruction import psnr
from jaxmetrics.reconstruction import reconstruction_error
from jaxmetrics.reconstruction import ssim
from jaxmetrics.semantic import ClipScore
from jaxmetrics.semantic import SemanticSimilarity
from jaxmetrics.semantic import clip_score
from jaxmetrics.semantic import semantic_similarity
from jaxmetrics.statistics import FeatureStats
from jaxmetrics.statistics import load_stats
from jaxmetrics.statistics import save_stats

__version__ = "0.1.0.dev0"

__all__ = [
    "CheckpointError",
    "clip",
    "clip_score",
    "ClipScore",
    "contiguous_split",
    "evaluate",
    "Evaluator",
    "extract",
    "features",
    "FeatureStats",
    "fid",
    "frechet_distance",
    "frechet_distance_from_features",
    "FrechetReference",
    "inception",
    "inception_score",
    "InceptionScoreState",
    "InputError",
    "JaxmetricsError",
    "kid",
    "load_params",
    "load_stats",
    "psnr",
    "reconstruction_error",
    "ReconstructionState",
    "save_statistics",
    "save_stats",
    "semantic_similarity",
    "SemanticSimilarity",
    "ssim",
    "weights",
    "WeightsError",
]
