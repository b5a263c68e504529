"""What every role of BEAT shares (the router daemon ``beatd``, the testbed, the governance, the
ledger client): the SPEC's constants (``beat_common.spec``) and TOML in and out
(``beat_common.tomlfile``). Standard library only; it imports no other BEAT package."""
