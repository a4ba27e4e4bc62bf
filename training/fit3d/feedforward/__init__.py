"""Feed-forward lifting (the Large Spatial Model's step; Splat-and-Distill's input to Stage 2):
a network trained across scenes maps posed context views to feature Gaussians in one forward
pass, written in Stage 1's lifted-file format. ``python -m training.fit3d.feedforward`` trains
it, ``python -m training.fit3d.feedforward.lift`` lifts scenes with it."""
