"""lockgate.operators: pure functions over Polars frames, plus explicit state.

No Kafka, no LanceDB, no clocks, no I/O here.
"""
