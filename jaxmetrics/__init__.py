"""jaxmetrics: evaluation metrics for generative image models, in JAX.

The FID Inception-v3 as a Flax module that reproduces the TensorFlow reference network
(:mod:`jaxmetrics.networks.inception`), its weights registry (:mod:`jaxmetrics.checkpoints.weights`) and
the metrics built on it (:mod:`jaxmetrics.metrics`), joined by the pipeline (:mod:`jaxmetrics.pipeline`). What users call is re-exported here; other modules are free to change.
"""

from jaxmetrics.networks import clip
from jaxmetrics.networks import dinov2
from jaxmetrics.pipeline import extract
from jaxmetrics.networks import inception
from jaxmetrics.metrics import training
from jaxmetrics.checkpoints import weights
from jaxmetrics._errors import CheckpointError
from jaxmetrics._errors import InputError
from jaxmetrics._errors import JaxmetricsError
from jaxmetrics._errors import WeightsError
from jaxmetrics.pipeline.datasets import SamplerSource
from jaxmetrics.pipeline.evaluation import Evaluator
from jaxmetrics.pipeline.evaluation import evaluate
from jaxmetrics.pipeline.evaluation import fid
from jaxmetrics.pipeline.evaluation import save_statistics
from jaxmetrics.metrics.frechet import FrechetReference
from jaxmetrics.metrics.frechet import frechet_distance
from jaxmetrics.metrics.frechet import frechet_distance_from_features
from jaxmetrics.networks.inception import features
from jaxmetrics.networks.inception import load_params
from jaxmetrics.metrics.inception_score import InceptionScoreState
from jaxmetrics.metrics.inception_score import contiguous_split
from jaxmetrics.metrics.inception_score import inception_score
from jaxmetrics.metrics.kid import kid
from jaxmetrics.metrics.manifold import density_coverage
from jaxmetrics.metrics.manifold import manifold_metrics
from jaxmetrics.metrics.manifold import precision_recall
from jaxmetrics.metrics.mmd import cmmd
from jaxmetrics.metrics.mmd import mmd_rbf
from jaxmetrics.metrics.reconstruction import ReconstructionState
from jaxmetrics.metrics.reconstruction import psnr
from jaxmetrics.metrics.reconstruction import reconstruction_error
from jaxmetrics.metrics.reconstruction import ssim
from jaxmetrics.metrics.semantic import ClipScore
from jaxmetrics.metrics.semantic import SemanticSimilarity
from jaxmetrics.metrics.semantic import clip_score
from jaxmetrics.metrics.semantic import semantic_similarity
from jaxmetrics.metrics.statistics import FeatureBuffer
from jaxmetrics.metrics.statistics import FeatureStats
from jaxmetrics.metrics.statistics import load_stats
from jaxmetrics.metrics.statistics import save_stats

__version__ = "0.1.0.dev0"

__all__ = [
    "CheckpointError",
    "clip",
    "clip_score",
    "ClipScore",
    "cmmd",
    "contiguous_split",
    "density_coverage",
    "dinov2",
    "evaluate",
    "Evaluator",
    "extract",
    "features",
    "FeatureBuffer",
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
    "manifold_metrics",
    "mmd_rbf",
    "precision_recall",
    "psnr",
    "reconstruction_error",
    "ReconstructionState",
    "SamplerSource",
    "save_statistics",
    "save_stats",
    "semantic_similarity",
    "SemanticSimilarity",
    "ssim",
    "training",
    "weights",
    "WeightsError",
]
