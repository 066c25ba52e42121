"""The public API for plugin authors: every benchbase name a plugin, its tests or its tools use.

Import from here (``from benchbase.api import Method, Tap, hookimpl``); the modules behind these
names may move, this list does not change without a deprecation. :data:`__all__` is the declared
set, checked by the test suite, and the built-in plugins and the plugin templates import benchbase
only through it.
"""

from benchbase import distributed, hookimpl
from benchbase.capture import Captures, ModelInput, Tap, run_vit
from benchbase.cli import main as run_cli
from benchbase.components import (
    DataBundle,
    DatasetInfo,
    Evaluator,
    LabeledImages,
    Loss,
    Method,
    Metric,
    StepInputs,
    Student,
    Teacher,
    VitModel,
    read_channels,
)
from benchbase.data.tensors import TensorImages
from benchbase.errors import BenchbaseError
from benchbase.evaluation.classification import accuracy_metrics
from benchbase.evaluation.features import check_pooling, extract_features
from benchbase.evaluation.segments import GT_MIN_AREA, connected_segments
from benchbase.hookspecs import Register
from benchbase.leaderboard import FIGURES_DIR
from benchbase.loggers import Logger, RunInfo, StepLog
from benchbase.methods import Methods
from benchbase.models import set_block_heads, sincos_pos_embed
from benchbase.plugin_manager import load as load_plugins
from benchbase.results import ResultsDB
from benchbase.sam import SamStudent, SamTeacher, pad_to_size, sam_attention, window_attention_to_dense
from benchbase.teachers import load_teacher

__all__ = [
    # hooks
    "hookimpl", "Register",
    # methods and their per-step interface
    "Method", "Loss", "StepInputs", "Captures", "ModelInput", "Tap", "run_vit",
    # models
    "VitModel", "Student", "Teacher", "SamStudent", "SamTeacher", "pad_to_size", "sam_attention",
    "window_attention_to_dense", "read_channels", "set_block_heads",
    "sincos_pos_embed",
    # evaluators and datasets
    "Evaluator", "Metric", "accuracy_metrics", "check_pooling", "extract_features",
    "connected_segments", "GT_MIN_AREA",
    "DataBundle", "DatasetInfo", "LabeledImages", "TensorImages",
    # loggers
    "Logger", "RunInfo", "StepLog",
    # errors, processes
    "BenchbaseError", "distributed",
    # tools and tests of plugins
    "load_plugins", "Methods", "load_teacher", "FIGURES_DIR", "ResultsDB", "run_cli",
]
