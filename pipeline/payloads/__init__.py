"""Stage 3: a row plus the job becomes a Messages payload and a stable fingerprint. Pure and
CPU-bound: images shrunk within the model's limits, prompts rendered, token estimates, dedupe keys.
"""
