"""Sparse autoencoders: activation caches, SAELens training and evaluation, feature circuits.

>>> from mechkit import sae                                                    # doctest: +SKIP
>>> sae.write_cache(model, tokens, "cache/", hooks=["blocks.1.hook_resid_post"])  # doctest: +SKIP
>>> s = sae.train_sae("cache/", "blocks.1.hook_resid_post", "saes/L1", sae.TrainConfig(steps=500))  # doctest: +SKIP
>>> sae.evaluate_sae(model, sae.load_sae("saes/L1"), tokens)                    # doctest: +SKIP

SAEs are SAELens objects throughout; mechkit adds the cache, resumable training and analysis.
"""

from mechkit.sae.cache import ActivationCache as ActivationCache, write_cache as write_cache
from mechkit.sae.train import (
    TrainConfig as TrainConfig,
    architectures as architectures,
    build_training_sae as build_training_sae,
    train_sae as train_sae,
)
from mechkit.sae.io import load_sae as load_sae, sae_hook as sae_hook
from mechkit.sae.evaluate import SAEEval as SAEEval, eval_table as eval_table, evaluate_sae as evaluate_sae
from mechkit.sae.features import FeatureStats as FeatureStats, feature_stats as feature_stats
from mechkit.sae.dashboard import write_dashboard as write_dashboard
from mechkit.sae.attribution import (
    FeatureAttribution as FeatureAttribution,
    InterventionReport as InterventionReport,
    attribute_features as attribute_features,
    feature_circuit as feature_circuit,
    feature_intervention as feature_intervention,
    feature_strength as feature_strength,
    intervention_report as intervention_report,
    verify_feature_circuit as verify_feature_circuit,
)
