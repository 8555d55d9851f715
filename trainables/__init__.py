"""Ray Tune trainables: the only layer that calls Ray."""
