"""compdiff: compositional generation with diffusion models."""
