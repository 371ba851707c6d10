"""Everything pgblobs says to PostgreSQL.

- ``queries.sql`` / ``queries.py``: every statement, under a name;
- ``connector.py``: the connections (an asynchronous pool for statements,
  synchronous connections for content threads, operator tools and the CLI),
  rows with named fields, transactions, and the translation of database errors;
- ``largeobjects.py``: storing and loading blob content in large objects;
- ``schema.py``: alembic's head, upgrading to it, checking it.
"""
