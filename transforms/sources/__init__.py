"""Sources and sinks behind one interface, keyed by URL scheme (``registry``).

Import ``transforms.sources.registry`` for the registry and what pipelines use; ``base``
holds the interface (kept free of the sources, so a source's own package may use it).
"""
