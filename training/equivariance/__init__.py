"""Multiview-equivariance fine-tuning (ICLR 2025; authors' code: qq456cvb/3DCorrEnhance).

Work in progress (issue 15): the pure pieces so far, LoRA on the q and v slices of timm's
fused qkv (``lora``) and the authors' two-term smooth-AP loss (``loss``). The training loop,
the repo format entry and the demo are not written yet.
"""
