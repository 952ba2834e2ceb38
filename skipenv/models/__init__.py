"""The network: CIFAR ResNets that really skip blocks, gates, MAC counts, checkpoints and
the shipped weights.


``BACKBONE_KINDS`` lives here, free of torch, so that :mod:`skipenv.models.pretrained` (which
must not import torch) and :mod:`skipenv.models.checkpoint` share one copy.
"""

#: Checkpoint kinds whose ``model`` is a backbone an environment can route images through; a
#: shipped model has one of them. ``static``: a backbone fine-tuned for one fixed route, kept in
#: ``route`` (train/static.py, issue 12).
BACKBONE_KINDS: tuple[str, ...] = ("base", "sp", "hrl", "static")
