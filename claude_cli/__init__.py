"""The Claude Code CLI seam: the only code that starts ``claude``, and it knows nothing of Django.

- ``invocation``: what one run is (prompt, model, MCP servers), the runner's configuration, the
  argv built from them and the outcome of a run.
- ``process``: starting the CLI in its own process group, reading its pipes without threads, and
  stopping the whole group.
- ``warm``: a CLI started ahead of its prompt, waiting on stdin.
- ``runner``: one run from start (or hand-over of a warm CLI) to a classified outcome.
- ``pool``: the warm CLIs a worker process keeps, one set per model and MCP server set.

The Django side (settings, routing, metrics, rq) lives in ``queries.pool`` and ``queries.services``.
"""
