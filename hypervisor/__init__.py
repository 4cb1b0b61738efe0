"""The minimal hypervisor core: memory, grant tables, event channels,
domains and the hypercall table. Handlers are synchronous; only waiting is
async."""
