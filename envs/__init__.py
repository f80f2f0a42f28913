"""Gymnasium meta-environment: one episode is one real training run (see issue 3)."""
