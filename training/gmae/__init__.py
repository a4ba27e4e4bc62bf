"""Gaussian Masked Autoencoders (Rajasegaran et al., arXiv 2501.03229; authors' code:
tekotan/video-gmae at 0184262), run as ``python -m training.gmae``.

``config`` (settings), ``data`` (image folders and Hugging Face datasets, MAE's augmentation
in DataLoader workers), ``model`` (the masked encoder, the losses), ``trainer`` (the
Accelerate loop), ``run`` (the library call), ``cli``; the decoders, the rendering and the
zero-shot outputs are :mod:`fit3d_hub.gmae` (the wheel ships them).
"""
