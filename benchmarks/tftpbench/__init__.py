"""Side-by-side TFTP server benchmark harness behind `make bench` (entry point: run.py)."""
