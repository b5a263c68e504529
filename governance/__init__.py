"""The governance's tools: ``beatctl`` (governance/cli.py) registers nodes and SLAs on the ledger
and reads it back."""
