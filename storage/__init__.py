"""lockgate.storage: LanceDB window state, sink tables, the commit log and committed-only reads."""
