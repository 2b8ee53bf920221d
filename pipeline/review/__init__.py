"""Commands that read an output directory: ``status``, ``export`` and the ``report`` gallery."""
