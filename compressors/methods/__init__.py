"""The methods: one module each, registered by name with its facts (``registry.register``).

Importing this package registers every method and imports no torch; a retraining method
loads the training machinery when it trains. To add a method, add its module and list it
below.
"""

from compressors.methods import group_lasso, l1, l2, nuclear, prune, svd, variational
from compressors.methods.registry import (
    METHODS,
    RULES,
    WEIGHTINGS,
    Method,
    Trained,
    Weighting,
    Weights,
    get,
    register,
    rule_as_dict,
    rule_from,
)

__all__ = [
    "METHODS",
    "RULES",
    "WEIGHTINGS",
    "Method",
    "Trained",
    "Weighting",
    "Weights",
    "get",
    "group_lasso",
    "l1",
    "l2",
    "nuclear",
    "prune",
    "register",
    "rule_as_dict",
    "rule_from",
    "svd",
    "variational",
]
