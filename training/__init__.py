"""Training, one folder per method over shared parts: ``fit3d`` (Stage 1 ``lift``, Stage 2
``finetune``), ``equivariance``; ``common`` holds what they share. No method imports another;
``fit3d_hub.methods`` lists them."""
