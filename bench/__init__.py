"""OFP benchmark suite: `python -m bench` writes docs/benchmarks.md.

Every workload runs as a real process (`ofp-projector`, `ofp-server`) against
a fresh database per scenario; gRPC load comes from `h2load`, and every figure
is reported next to a reference measured in the same run on the same machine
(an echo grpc.aio server for serving, a raw `COPY` for ingest).

Modules: `workload` (fast event lines and requests), `pg` (the bench
PostgreSQL), `procs` (product processes, RSS sampling), `h2load` (the load
generator), `echo_server` (the serving reference), `scenarios` (the figures),
`report` (the Markdown record).
"""
