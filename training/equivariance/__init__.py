"""Multiview-equivariance fine-tuning (You et al., ICLR 2025; authors' code:
qq456cvb/3DCorrEnhance), run as ``python -m training.equivariance``.

``config`` (settings), ``pairs`` (views, points and 3D distances, on the eval's ground
truth), ``augment``, ``network`` (ViT + LoRA + refine conv, input size), ``loss`` (smooth
AP), ``trainer`` (the Accelerate loop), ``run`` (the library call), ``cli``; the LoRA itself
is :mod:`fit3d_hub.lora` (the converter of the authors' weights uses it too) and the refine
conv :mod:`fit3d_hub.refine`.
"""
