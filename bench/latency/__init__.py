"""The latency benchmark, ``bench/bench_latency.py``, one module per experiment."""
