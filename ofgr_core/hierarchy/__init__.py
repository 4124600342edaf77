"""Label hierarchies that are missing or imperfect: inducing a coarse level, suspected label errors."""
