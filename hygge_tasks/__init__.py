"""hygge's Prefect tasks and the engine pieces that are not about one Home or Store."""
