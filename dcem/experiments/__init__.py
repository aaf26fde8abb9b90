"""Experiments of the paper, each runnable as ``dcem-exp NAME [hydra overrides...]``.

Every experiment is a subpackage ``dcem.experiments.NAME`` whose ``__init__`` (or ``run``
module) exposes ``main(argv: list[str]) -> None`` and ships its Hydra configs next to it.
"""
