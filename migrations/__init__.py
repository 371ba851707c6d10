"""The schema's alembic migrations, shipped inside the package as ``pgblobs.migrations``
(pyproject.toml maps it here), so an installed pgblobs can migrate a database."""
