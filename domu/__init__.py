"""domU guest kernels: xenbus client, frontends, user programs."""
