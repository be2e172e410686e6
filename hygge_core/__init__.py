"""hygge's ground floor: what every other package stands on and that imports none of them.

Errors, fault points, the manifest and its atomic writes, the Arrow type rules, nanosecond
timestamps. Imports run one way: hygge_core <- blocks <- hygge_tasks <- flows
(`tests/test_layers.py` checks it).
"""

import os

# Polars' allocator (jemalloc, configured once as Polars loads) keeps freed pages for 0.5-1 s
# and purges an arena only when that arena is used again: a thread that is done (one encoder
# thread per output file) leaves its pages resident, and a long run's peak grows with the
# files it writes. A background purging thread and no decay keep it flat (issue 20,
# bench/scale.py). Each package's `__init__` imports this before anything loads Polars; Polars
# appends a value the user set after its own, and that value is kept.
os.environ.setdefault(
    "_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:0,muzzy_decay_ms:0"
)
