"""mldiff: multilevel function-space diffusion models on reaction-diffusion PDE data."""

__version__ = "0.1.0"
