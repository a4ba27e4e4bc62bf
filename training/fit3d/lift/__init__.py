"""FiT3D Stage 1: a scene's views and a backbone's features -> 3D feature Gaussians
(``python -m training.fit3d.lift``).

``config`` (settings), ``gaussians`` (the Gaussians and their decoder), ``losses``,
``teacher`` (the per-view feature cache), ``trainer`` (the per-scene loop), ``record`` (the
lifted file and its typed metadata, Stage 2's input), ``run`` (over a set of scenes),
``cli``. Rendering is :mod:`fit3d_hub.render`.
"""
