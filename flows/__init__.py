"""hygge's parent flow (`flows.run.hygge`), its spec and its command line."""

import hygge_core  # noqa: F401  (before Polars loads: the allocator's settings)
