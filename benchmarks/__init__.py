"""The benchmark suite behind `make bench`: each module measures one thing and returns rows."""
