"""Declarative stages: filter, set, rename, drop and route, applied by every consumer after validation.

spec.py checks the `stages:` list of config.yaml; the chain that runs it is built here.
"""

from streamd.stages.spec import KINDS, StageSpecError, check_stages, routed_collections

__all__ = ["KINDS", "StageSpecError", "check_stages", "routed_collections"]
