"""Everything about processes and sharding lives here, apart from the model."""
