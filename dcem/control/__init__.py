"""Control with CEM/DCEM: dynamics, model-predictive control and learned latent action spaces."""

from dcem.control.decoder import ActionDecoder

__all__ = ["ActionDecoder"]
