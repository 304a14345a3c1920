"""Decision MetaMamba: offline RL with multi-modal token mixers and selective SSMs.

Light at import: only torch and dmm_kernels (data, training and plotting load on use).
"""
__version__ = "0.1.0"

from dmm.baselines import DecisionTransformer
from dmm.factory import build_model
from dmm.loss import action_loss
from dmm.model import DecisionMetaMamba, RecurrentPolicy
from dmm.nn import MambaBlock, MetaMambaBlock

__all__ = [
    "MambaBlock", "MetaMambaBlock", "DecisionMetaMamba", "DecisionTransformer", "RecurrentPolicy",
    "action_loss", "build_model", "__version__",
]
