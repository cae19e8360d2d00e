"""Small pieces every floor uses: ``errors`` (``UserError``, the one-line error), ``files`` (atomic writes,
hashing, disk errors, bounded reads), ``jsonio`` (JSON parsing whose every failure is a ``ValueError``),
``interrupts`` (SIGTERM as an interrupt), ``machine`` (CPU flags, memory, versions)
and ``http_retry`` (bounded reads, retries).  Imports nothing else of ours."""
