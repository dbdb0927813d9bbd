"""The VM pool: who is in it (registry, members), how machines start and stop (backends), and
the glue that applies the scheduling policy to them (scaler).

VMs cost money only while they run, so every state change goes through ETag-conditional writes in
the pool table: two scalers, or a scaler and an agent, can never both act on a stale view.
"""
