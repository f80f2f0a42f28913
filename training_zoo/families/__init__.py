"""The built-in task families, one module per domain."""
