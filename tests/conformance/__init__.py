"""Every driver pair through the shared conformance suite (:mod:`dom0.conformance`)."""
