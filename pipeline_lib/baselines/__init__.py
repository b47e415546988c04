"""Per-dataset causal discovery baselines; every one returns a ``CausalPosterior``."""
from pipeline_lib.baselines.base import CausalPosterior, DensityEstimate, GraphMixturePosterior
from pipeline_lib.baselines.bge import BGe, BGeScorer, sample_bge_parameters
from pipeline_lib.baselines.enumeration import enumerate_dags, markov_equivalent, parent_bitmasks
from pipeline_lib.baselines.exact import BGeMixturePosterior, ExactPosterior
from pipeline_lib.baselines.two_node import TwoNodePosterior
from pipeline_lib.baselines.dibs import DiBSConfig, DiBSError, DiBSJointPosterior, fit_dibs_joint, fit_dibs_marginal
from pipeline_lib.baselines.bacadi import BaCaDIConfig, BaCaDIPosterior, fit_bacadi
from pipeline_lib.baselines.dcdi import DCDIConfig, DCDIInputError, DCDIPosterior, fit_dcdi
from pipeline_lib.baselines.registry import BASELINES, UnknownMethodError, fit_baseline
