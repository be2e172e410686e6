"""hygge's ground floor: what every other package stands on and that imports none of them.

Errors, fault points, the manifest and its atomic writes, the Arrow type rules, nanosecond
timestamps. Imports run one way: hygge_core <- blocks <- hygge_tasks <- flows
(`tests/test_layers.py` checks it).
"""
