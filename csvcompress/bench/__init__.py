"""`make bench`: how close the service comes to what libvips alone can do.

One run, one process tree, one corpus. The driver (this package) builds or
reads the corpus, measures the raw baseline in its own thread pool, then
starts an image origin and the real service (`python -m csvcompress serve`
with a temporary config) as subprocesses, and drives the service over HTTP:

- throughput end to end against the raw baseline, libvips and Pillow;
- the service's peak RSS on big images;
- the time to 202 for a 100,000-row upload, and its memory;
- GET /status latency at a steady request rate while a job runs;
- start-up time to the first request served.

See `python -m csvcompress.bench --help`; results are appended to bench/results.md.
"""
