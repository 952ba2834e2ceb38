"""Training infrastructure the entry points share: run folders, the training loop,
evaluation, devices and data parallelism.
"""
