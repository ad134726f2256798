"""The model library: the SRS selector, its losses, pretrained-weight loaders and tokenizer.

``factory.build_model`` builds a selector from its config, ``checkpoint.BestCheckpoint`` owns
the ``best.pt`` format and ``vocab`` resolves a run's vocabulary; only those two read the
object store. Everything else takes tensors and in-memory state dicts.
"""

from srs_core.model.flops import flops_per_dialog
from srs_core.model.selector import SrsModel, convert_sync_batchnorm, param_groups, unwrap

__all__ = ["SrsModel", "convert_sync_batchnorm", "flops_per_dialog", "param_groups", "unwrap"]
