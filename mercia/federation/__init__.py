"""Federated network: every organisation keeps its data on its own node; the hub returns one
de-duplicated, disclosure-controlled answer (see docs/federation.md)."""
