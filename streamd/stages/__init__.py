"""Declarative stages: filter, set, rename, drop and route, applied by every consumer after validation.

spec.py checks the `stages:` list of config.yaml, expressions.py parses and sandboxes the expressions,
compiled.py turns each into closures run per message, chain.py applies the compiled list to each message,
trial.py is `streamd stages try`.
"""

from streamd.stages.chain import Outcome, StageChain
from streamd.stages.spec import KINDS, StageSpecError, check_stages, routed_collections

__all__ = ["KINDS", "Outcome", "StageChain", "StageSpecError", "check_stages", "routed_collections"]
