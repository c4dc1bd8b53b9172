"""Our wrappers under torch.distributed engines (DDP, ZeroRedundancyOptimizer, FSDP2) against torch.optim."""
