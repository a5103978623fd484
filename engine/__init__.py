"""lockgate.engine: the runtime, and the only owner of confluent_kafka."""
