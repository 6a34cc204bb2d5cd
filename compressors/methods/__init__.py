"""One module per compression method, each with one entry point returning a result object."""
