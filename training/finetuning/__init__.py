"""Stage 2 pieces: lifted-scene store, target rendering, the fine-tuning loop."""
