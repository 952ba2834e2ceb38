"""SkipNet-gym: dynamic block skipping in residual networks as an RL problem.

Importing the package registers the environment ``SkipNet-CIFAR10-v0`` with Gymnasium
(``gymnasium.make("skipenv:SkipNet-CIFAR10-v0")`` imports it on the fly); ``make_vec``
builds the native batched :class:`~skipenv.envs.vector_env.SkipNetVectorEnv`.
:func:`list_pretrained` names the pretrained models that ship with the package
(:mod:`skipenv.models.pretrained`).
"""

import gymnasium

__version__ = "0.1.0"

ENV_ID = "SkipNet-CIFAR10-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="skipenv.envs.env:SkipNetEnv",
        vector_entry_point="skipenv.envs.vector_env:SkipNetVectorEnv",
    )


def list_pretrained() -> list[str]:
    """Names of the pretrained models shipped with skipnet-gym (``checkpoint=`` accepts them).

    See :mod:`skipenv.models.pretrained`; imported on call, so ``import skipenv`` stays light and
    ``python -m skipenv.models.pretrained`` runs cleanly.
    """
    from skipenv.models.pretrained import list_pretrained as _list_pretrained

    return _list_pretrained()
