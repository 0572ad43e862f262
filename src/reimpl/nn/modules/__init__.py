from reimpl.nn.modules.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm
from reimpl.nn.modules.distance import CosineSimilarity, PairwiseDistance
from reimpl.nn.modules.dropout import (
    AlphaDropout,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    FeatureAlphaDropout,
)
from reimpl.nn.modules.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from reimpl.nn.modules.lazy import (
    LazyBatchNorm1d,
    LazyBatchNorm2d,
    LazyBatchNorm3d,
    LazyInstanceNorm1d,
    LazyInstanceNorm2d,
    LazyInstanceNorm3d,
)
from reimpl.nn.modules.local_response_norm import LocalResponseNorm
from reimpl.nn.modules.loss import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    HuberLoss,
    L1Loss,
    MSELoss,
    NLLLoss,
    SmoothL1Loss,
)
from reimpl.nn.modules.loss_ctc import CTCLoss
from reimpl.nn.modules.loss_lean import AdaptiveLogSoftmaxWithLoss, LinearCrossEntropyLoss
from reimpl.nn.modules.loss_likelihood import GaussianNLLLoss, KLDivLoss, PoissonNLLLoss
from reimpl.nn.modules.loss_margin import (
    CosineEmbeddingLoss,
    HingeEmbeddingLoss,
    MarginRankingLoss,
    MultiLabelMarginLoss,
    MultiLabelSoftMarginLoss,
    MultiMarginLoss,
    SoftMarginLoss,
    TripletMarginLoss,
    TripletMarginWithDistanceLoss,
)
from reimpl.nn.modules.normalization import GroupNorm, LayerNorm, RMSNorm

__all__ = [
    "AdaptiveLogSoftmaxWithLoss",
    "AlphaDropout",
    "BCELoss",
    "BCEWithLogitsLoss",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "CTCLoss",
    "CosineEmbeddingLoss",
    "CosineSimilarity",
    "CrossEntropyLoss",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "FeatureAlphaDropout",
    "GaussianNLLLoss",
    "GroupNorm",
    "HingeEmbeddingLoss",
    "HuberLoss",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "KLDivLoss",
    "L1Loss",
    "LayerNorm",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
    "LazyInstanceNorm1d",
    "LazyInstanceNorm2d",
    "LazyInstanceNorm3d",
    "LinearCrossEntropyLoss",
    "LocalResponseNorm",
    "MSELoss",
    "MarginRankingLoss",
    "MultiLabelMarginLoss",
    "MultiLabelSoftMarginLoss",
    "MultiMarginLoss",
    "NLLLoss",
    "PairwiseDistance",
    "PoissonNLLLoss",
    "RMSNorm",
    "SmoothL1Loss",
    "SoftMarginLoss",
    "SyncBatchNorm",
    "TripletMarginLoss",
    "TripletMarginWithDistanceLoss",
]
