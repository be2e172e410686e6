"""The `prefect.collections` entry point: every hygge block, imported.

Prefect imports this before it looks a saved block up by its type slug, so a worker that never
imported an Azure Store still finds `adls-store/...`.
"""

from blocks import load_all

load_all()
