"""Small pieces every floor uses: ``errors`` (``UserError``, the one-line error), ``files`` (atomic writes,
hashing, disk errors), ``interrupts`` (SIGTERM as an interrupt), ``machine`` (CPU flags, memory, versions)
and ``http_retry`` (bounded reads, retries).  Imports nothing else of ours."""
