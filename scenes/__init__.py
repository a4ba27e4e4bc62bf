"""Multi-view scene data shared by training and evaluation.

``types`` (Frame, Scene), ``cameras`` (the one camera convention), ``io`` (images, masks,
depth), the readers ``nerfstudio``, ``scannetpp`` and ``colmap``, ``load`` (which picks the
reader), ``points``, ``holdout`` (the held-out view rule), ``views`` (a scene's images and
cameras at training size), ``correspondence`` (ground truth from depth and poses) and
``synthetic`` (generated scenes).
"""
