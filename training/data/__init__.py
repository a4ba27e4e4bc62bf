"""Scene readers (nerfstudio, COLMAP) and the synthetic scene generator."""
