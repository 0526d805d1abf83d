"""The benchmark harness of Nexus Relay (issue 5): ``python -m bench.run --quick|--full``.

See bench/README.md for what is measured, how, and the latest figures.
"""
