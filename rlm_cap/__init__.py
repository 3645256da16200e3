"""rlm_cap: data caps (CAP), bonus time frames, rollover and top-ups for FreeRADIUS.

The pure core (``units``, ``counters``, ``periods``, ``policy``, ``settings``)
has no I/O and no clock; ``store`` holds all SQL; ``ledger`` composes the two
into the operations that the FreeRADIUS module, the enforcer and ``capctl`` run.
"""
