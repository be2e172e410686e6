"""hygge's Prefect tasks and the engine pieces that are not about one Home or Store."""

import hygge_core  # noqa: F401  (before Polars loads: the allocator's settings)
