"""``beatctl serve``: the governance service that watches the SLAs (docs/governance-service.md).

config.py (the [service] table), watcher.py (the ledger, polled), monitor.py (QM-SLA evaluation
per receipt epoch), delay.py (sampled interrogations), disputes.py (open, interrogate, file:
once each across restarts), state.py (its own state on disk), metrics.py and api.py (Prometheus
and the read-only JSON API on a loopback port), service.py (the threads)."""
