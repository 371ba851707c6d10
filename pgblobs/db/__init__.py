"""Everything pgblobs says to PostgreSQL.

- ``queries.sql`` / ``queries.py``: every statement, under a name, and ``Row``;
- ``connector.py``: ``Database``, the one door the backend uses: statements
  and content threads, admitted, over the modules below;
- ``pool.py``: the asynchronous statement pool, reconnection, deadlines;
- ``sync.py``: synchronous connections (content threads, operator tools, the
  CLI), their transactions, and the pool of them content threads share;
- ``admission.py``: capacities, waiting rooms, per-user shares of transfers;
- ``errors.py``: what a database error means; ``dsn.py``: session settings;
- ``largeobjects.py``: storing and loading blob content in large objects;
- ``schema.py``: alembic's head, upgrading to it, checking it.
"""
