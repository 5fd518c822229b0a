"""ganscale: train image GANs (DCGAN, ACGAN) from one CPU or GPU to many GPUs on many nodes."""

__version__ = "0.1.0"
