"""Commands that walk stages 1-3 without a Messages request: ``validate`` and ``estimate``."""
