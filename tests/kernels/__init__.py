"""The kernel matrix: stock distribution kernels booted under qemu with virtme-ng (docs/kernels.md)."""
