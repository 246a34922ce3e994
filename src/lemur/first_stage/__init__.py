"""First stages: the candidates of a batch of query features over W's rows."""
