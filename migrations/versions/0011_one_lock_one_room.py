"""The write functions of revision 0008 go: the per-user lock key and the quota
room are each written once (``pgblobs.user_lock_key``, ``pgblobs.room``), and
pgblobs/db/schema.sql shows the schema this revision leaves.

Dropped: ``pgblobs.store_small_blobs``, ``pgblobs.store_blob`` and
``pgblobs.put_blob`` (which ``store_blob`` called). They spelled the lock key
(``'pgblobs.user:' || user``) and the quota arithmetic out again. Only code
older than revision 0009's release calls them: from 0009 on, pgblobs calls
``store_small_blobs_v2``, ``store_blobs_v2``, ``insert_blobs``, ``lock_users``
and ``room`` (queries.sql at 0009 and 0010; the first commit of 0009,
223d384, still called ``store_blob`` and ``store_small_blobs``, but 0009 was
rewritten before its release and that code was never released). Kept, since
code of 0009 and 0010 calls them: every other function. Dropping rather than redefining them,
because a copy kept "for old nodes" is exactly what no one reads any more and
what drifts; ``code_floor`` below says who may still be connected.

The rules for revisions from this one on (pgblobs/db/schema.py enforces the
first three when it applies them):

- A function whose meaning changes gets a new versioned name (``..._v2``,
  ``_v3``); the old one keeps working until a later revision drops it, so
  nodes of the previous release go on serving while the schema moves ahead.
- A revision that drops a function (or anything else older code uses) says
  so in ``code_floor``: the oldest code revision that still works once it is
  applied. ``pgblobs db upgrade`` refuses it while nodes older than that are
  connected, and names them.
- Each migration runs with a ``lock_timeout`` (migrations/env.py sets it for
  the session): a statement that cannot get its lock in a few seconds fails,
  the revision is rolled back and ``db upgrade`` says so, instead of queueing
  every node's statements behind the waiting lock.
- An index added to a big table is built with ``CREATE INDEX CONCURRENTLY``
  inside ``op.get_context().autocommit_block()``, which takes no lock that
  stops writes.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# The oldest code revision that keeps working once this revision is applied.
code_floor = "0009"


def upgrade():
    op.execute(
        "DROP FUNCTION pgblobs.store_small_blobs(text[], text[], text[], bytea[], text[], "
        "bytea[], text[], bigint)"
    )
    op.execute(
        "DROP FUNCTION pgblobs.store_blob(text, text, text, oid, bigint, text, bytea, bigint, "
        "text[])"
    )
    op.execute("DROP FUNCTION pgblobs.put_blob(text, text, text, oid, bigint, text, bytea, bigint)")


def downgrade():
    # The functions as revisions 0004, 0006 and 0008 left them, for code of
    # those revisions: self-contained, so they work at every revision down to
    # 0008 (the lock key and room functions go with 0009's downgrade).
    op.execute("""
        CREATE FUNCTION pgblobs.put_blob(
            p_user text, p_namespace text, p_blob_id text, p_oid oid,
            p_size bigint, p_tag text, p_sha256 bytea, p_default_quota bigint)
        RETURNS void LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            v_limit bigint;
            v_used  bigint;
        BEGIN
            PERFORM pg_advisory_xact_lock(hashtextextended('pgblobs.user:' || p_user, 0));
            v_limit := pgblobs.effective_quota(p_user, p_default_quota);
            IF v_limit IS NOT NULL THEN
                SELECT coalesce(sum(live_bytes), 0) INTO v_used
                FROM pgblobs.usage WHERE user_id = p_user;
                IF v_used + p_size > v_limit THEN
                    RAISE EXCEPTION 'quota exceeded for user %', p_user
                        USING ERRCODE = 'PB507';
                END IF;
            END IF;
            DELETE FROM pgblobs.blobs
            WHERE user_id = p_user AND namespace = p_namespace
              AND blob_id = p_blob_id AND deleted_at IS NOT NULL;
            INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag, sha256)
            VALUES (p_user, p_namespace, p_blob_id, p_oid, p_size, p_tag, p_sha256);
        END
        $$
    """)
    op.execute("""
        CREATE FUNCTION pgblobs.store_blob(
            p_user text, p_namespace text, p_blob_id text, p_oid oid,
            p_size bigint, p_tag text, p_sha256 bytea, p_default_quota bigint,
            p_flags text[])
        RETURNS void LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM pgblobs.put_blob(p_user, p_namespace, p_blob_id, p_oid,
                                     p_size, p_tag, p_sha256, p_default_quota);
            IF cardinality(p_flags) > 0 THEN  -- most writes have none: no second lookup
                INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id,
                                                created_at, flag)
                SELECT b.id, b.user_id, b.namespace, b.blob_id, b.created_at, f.flag
                FROM pgblobs.blobs AS b, unnest(p_flags) AS f(flag)
                WHERE b.user_id = p_user AND b.namespace = p_namespace
                  AND b.blob_id = p_blob_id AND b.deleted_at IS NULL;
            END IF;
        END
        $$
    """)
    op.execute("""
        CREATE FUNCTION pgblobs.store_small_blobs(
            p_users text[], p_namespaces text[], p_blob_ids text[], p_contents bytea[],
            p_tags text[], p_sha256s bytea[], p_flags text[], p_default_quota bigint)
        RETURNS text[] LANGUAGE plpgsql VOLATILE AS $$
        DECLARE
            v_status text[];
            v_user   text;
            v_room   bigint;  -- bytes the user may still store
        BEGIN
            PERFORM pg_advisory_xact_lock(hashtextextended('pgblobs.user:' || name, 0))
            FROM (SELECT DISTINCT name FROM unnest(p_users) AS name ORDER BY name) AS users;
            -- Taken by a live blob, or by an earlier item of this batch.
            SELECT array_agg(CASE WHEN taken THEN 'exists' ELSE 'stored' END ORDER BY position)
            INTO v_status
            FROM (
                SELECT i.position,
                       EXISTS (SELECT 1 FROM pgblobs.blobs AS b
                               WHERE b.blob_id = i.blob_id AND b.namespace = i.namespace
                                 AND b.user_id = i.user_id AND b.deleted_at IS NULL)
                       OR row_number() OVER (PARTITION BY i.user_id, i.namespace, i.blob_id
                                             ORDER BY i.position) > 1 AS taken
                FROM unnest(p_users, p_namespaces, p_blob_ids)
                     WITH ORDINALITY AS i(user_id, namespace, blob_id, position)
            ) AS checked;
            -- Quotas, for the users that have one: in order, each blob that
            -- no longer fits fails alone.
            FOR v_user, v_room IN
                SELECT name, pgblobs.effective_quota(name, p_default_quota)
                             - (SELECT coalesce(sum(live_bytes), 0) FROM pgblobs.usage
                                WHERE user_id = name)
                FROM (SELECT DISTINCT name FROM unnest(p_users) AS name) AS users
            LOOP
                CONTINUE WHEN v_room IS NULL;
                FOR i IN 1 .. cardinality(p_blob_ids) LOOP
                    CONTINUE WHEN p_users[i] <> v_user OR v_status[i] <> 'stored';
                    IF octet_length(p_contents[i]) > v_room THEN
                        v_status[i] := 'quota';
                    ELSE
                        v_room := v_room - octet_length(p_contents[i]);
                    END IF;
                END LOOP;
            END LOOP;
            -- Writing an id again revives it: it stops being a tombstone.
            DELETE FROM pgblobs.blobs AS b
            USING unnest(p_users, p_namespaces, p_blob_ids, v_status)
                  AS k(user_id, namespace, blob_id, status)
            WHERE k.status = 'stored' AND b.blob_id = k.blob_id AND b.namespace = k.namespace
              AND b.user_id = k.user_id AND b.deleted_at IS NOT NULL;
            PERFORM pgblobs.insert_blobs(
                p_users, p_namespaces, p_blob_ids, p_contents, p_tags, p_sha256s, p_flags,
                '{}',
                (SELECT array_agg(status = 'stored' ORDER BY n)
                 FROM unnest(v_status) WITH ORDINALITY AS u(status, n)));
            RETURN v_status;
        END
        $$
    """)
