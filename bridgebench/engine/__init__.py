"""The engine: everything fit/validate/test/predict run (module, validation, checkpoints, run folders, CLI)."""
