"""lockgate.storage: LanceDB sink tables, commit records and committed-only reads."""
