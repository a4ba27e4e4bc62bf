"""FiT3D training: Stage 1 (lifting features into 3D Gaussians) and Stage 2 (fine-tuning)."""
