"""Recommendations from a trained student: batched top-K for every user, one-history queries, MLflow pyfunc."""
