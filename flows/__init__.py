"""hygge's parent flow (`flows.run.hygge`), its spec and its command line."""
