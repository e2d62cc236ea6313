"""Training: the model with its objectives (``lm``), the trainer loop and optimiser (``trainer``), learning-rate and
loss-weight schedules, checkpoints, metrics (JSON lines, TensorBoard), FLOPs and MFU (``flops``), and data
parallelism with torchrun + FSDP2 (``distributed``)."""
