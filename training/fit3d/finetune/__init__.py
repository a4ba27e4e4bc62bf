"""FiT3D Stage 2: the backbone fine-tuned on features rendered from Stage 1's lifted scenes
(``python -m training.fit3d.finetune``).

``config`` (settings), ``data`` (lifted scenes from Stage 1's record), ``targets`` (samples
and the rendered targets), ``trainer`` (the Accelerate loop), ``run`` (the library call),
``cli``.
"""
