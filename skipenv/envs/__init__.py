"""SkipNet-CIFAR10-v0: the episode core, the single and the vector environment, rendering
and the Stable-Baselines3 adapter.
"""
