"""Stage 1 of the flow: a job file (TOML) becomes a frozen, validated ``JobSpec``.

No table and no network: only the job file's own rules (keys, defaults, templates, tools).
"""
