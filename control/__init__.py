"""pydp control plane: the configuration store (SQLite), the pydpctl command line, and the pydp-control daemon."""
