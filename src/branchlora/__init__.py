"""branchlora: multimodal continual instruction tuning with BranchLoRA and its peers."""

__version__ = "0.1.0"
