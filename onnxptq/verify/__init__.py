"""Verification of exported models: QDQ parity (qdq.py), integer programs (integer.py, int_sim.py), golden files."""
