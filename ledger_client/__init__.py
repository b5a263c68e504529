"""BEAT ledger client: Merkle batches of receipts and segment commitments, anchored on a ledger.

Contract: docs/ledger.md. Backends: ``local`` (one LMDB file per host, for labs and tests) and
``ethereum`` (JSON-RPC to a permissioned chain with the BEAT contract).
"""
