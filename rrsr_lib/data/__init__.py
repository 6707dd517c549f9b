"""Data: the embedded real photographs and pairs (built by :mod:`rrsr_lib.data.build`)."""
