"""Integration tests run against a whole simulated host.

The fixtures (``xen_host``, ``guest_factory``) and the leak check come from
xensim's pytest plugin, :mod:`dom0.testing`, registered through the
``pytest11`` entry point, exactly as users' own test suites get them.
"""
