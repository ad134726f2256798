"""The model library: the SRS selector, its losses, pretrained-weight loaders and tokenizer.

Nothing here touches the object store or file paths (except the tokenizer's ``vocab.txt``);
the training and evaluation programs hand in tensors and in-memory state dicts.
"""

from srs_core.model.flops import flops_per_dialog
from srs_core.model.selector import SrsModel, convert_sync_batchnorm, param_groups, unwrap

__all__ = ["SrsModel", "convert_sync_batchnorm", "flops_per_dialog", "param_groups", "unwrap"]
