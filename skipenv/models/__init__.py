"""The network: CIFAR ResNets that really skip blocks, gates, MAC counts, checkpoints and
the shipped weights.
"""
