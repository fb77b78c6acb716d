"""The control plane: the public API, auth, sessions, runs, run events and worker dispatch."""
