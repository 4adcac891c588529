"""Training: Hungarian matcher, point-sampled set criterion, checkpoints and the (DDP) loop.

Consumes a COCO-panoptic set (``cmpf.data``) and a model with the CMPF training interface
(``forward_train``, ``text_classifier_for``, ``trainable_parameters``); produces checkpoints whose
``model`` entry uses the official key names.
"""

from __future__ import annotations

from cmpf.train.criterion import SetCriterion, dice_loss, sigmoid_ce_loss
from cmpf.train.loop import TrainConfig, TrainResult, train
from cmpf.train.matcher import HungarianMatcher
from cmpf.train.point_sampling import point_sample, uncertain_point_coords

__all__ = [
    "HungarianMatcher",
    "SetCriterion",
    "TrainConfig",
    "TrainResult",
    "dice_loss",
    "point_sample",
    "sigmoid_ce_loss",
    "train",
    "uncertain_point_coords",
]
