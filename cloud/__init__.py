"""soundwarden cloud: the FastAPI service that gathers clips, labels them and retrains models."""
