"""Facts about the outside world, kept as data with their sources: providers and prices.

Update these when the provider's documentation changes; nothing here does I/O beyond reading
the shipped data files.
"""
