"""The sidecar benchmark harness; bench/run.py is the command, bench/README.md the manual."""
