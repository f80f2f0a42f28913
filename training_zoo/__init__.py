"""The training zoo: tasks the meta-policy learns from (see issue 3)."""
