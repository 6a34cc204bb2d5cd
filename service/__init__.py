"""The modelpress service: API, settings, database, artifact store, executors, job runner."""
