"""FiT3D (Yue et al., ECCV 2024): ``lift`` (Stage 1: per-scene feature Gaussians) and
``finetune`` (Stage 2: the backbone fine-tuned on their renders)."""
