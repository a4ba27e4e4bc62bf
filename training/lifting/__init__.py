"""Stage 1 pieces: feature Gaussians, rasterizers, losses, densification, teacher cache."""
