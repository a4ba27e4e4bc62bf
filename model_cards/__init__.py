"""Model card template and per-backbone metadata (data files; shipped as fit3d_hub.model_cards)."""
