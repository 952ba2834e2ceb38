"""SkipNet-gym: dynamic block skipping in residual networks as an RL problem.

Importing the package registers the environment ``SkipNet-CIFAR10-v0`` with Gymnasium
(``gymnasium.make("skipenv:SkipNet-CIFAR10-v0")`` imports it on the fly); ``make_vec``
builds the native batched :class:`~skipenv.vector_env.SkipNetVectorEnv`.
"""

import gymnasium

__version__ = "0.1.0"

ENV_ID = "SkipNet-CIFAR10-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="skipenv.env:SkipNetEnv",
        vector_entry_point="skipenv.vector_env:SkipNetVectorEnv",
    )
