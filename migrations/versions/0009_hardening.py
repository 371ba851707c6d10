"""Hardening the write path: one user lock for every writer, outcomes per item,
a blob-count quota, plans that do not depend on statistics.

- ``pgblobs.lock_users(users)`` takes the per-user lock of each distinct user
  in name order (``pgblobs.user_lock_key`` is the one spelling of its key).
  Every path that writes blob rows takes it: the API's small and large
  writes, stream uploads, deliveries and import-fs (``insert_blobs`` now
  takes it too), so two writers of one user never race on a name or a quota.
- ``pgblobs.room(user, default_quota, default_quota_blobs)``: the bytes and
  the blobs a user may still store (NULL: no limit), the one place the
  quota arithmetic is written.
- ``pgblobs.insert_blob_rows``: rows and flags of whole blobs whose contents
  are large objects already, replacing tombstones of the same names (writing
  an id again revives it); every writer's last step.
- ``pgblobs.store_small_blobs_v2`` (the group commit) never waits for a
  user's lock: a user whose lock another writer holds gets 'busy' for all of
  that user's items, which the node sends again in a later batch, so one
  user's long write never stalls other users' batches. Each item is judged,
  in order, against what the items before it actually did (an id twice in
  a batch, the first over quota: the second may be stored).
- ``pgblobs.store_blobs_v2``: the rows of streamed blobs (one blob, or a whole
  stream upload) in set-based statements, waiting for the user's lock.
- The tombstones get a key index, so reviving an id is one index probe
  however many tombstones the user has.

The write functions run with ``plan_cache_mode = force_custom_plan``:
plpgsql keeps a generic plan made on the table as it was (empty, on a new
database) until the table is analysed, and a plan that scans an empty table
scans it still at 100,000 rows. A custom plan per call costs well under a
millisecond per batch. The functions of revision 0008 (``store_small_blobs``,
``put_blob``, ``store_blob``) stay, so nodes of the previous release keep
working while the cluster is upgraded.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# One column list per array argument of the functions below.
_ROW_ARRAYS = """p_users text[], p_namespaces text[], p_blob_ids text[], p_oids oid[],
                 p_sizes bigint[], p_tags text[], p_sha256s bytea[], p_flags text[],
                 p_dates timestamptz[]"""
_SMALL_ARRAYS = """p_users text[], p_namespaces text[], p_blob_ids text[], p_contents bytea[],
                   p_tags text[], p_sha256s bytea[], p_flags text[]"""


def upgrade():
    op.execute("""
        CREATE FUNCTION pgblobs.user_lock_key(p_user text) RETURNS bigint
        LANGUAGE sql IMMUTABLE AS $$
            SELECT hashtextextended('pgblobs.user:' || p_user, 0)
        $$
    """)
    op.execute("""
        CREATE FUNCTION pgblobs.lock_users(p_users text[]) RETURNS void
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            PERFORM pg_advisory_xact_lock(pgblobs.user_lock_key(name))
            FROM (SELECT DISTINCT name FROM unnest(p_users) AS name ORDER BY name) AS users;
        END
        $$
    """)
    op.execute("""
        CREATE FUNCTION pgblobs.room(
            p_user text, p_default_quota bigint, p_default_quota_blobs bigint,
            OUT bytes bigint, OUT blobs bigint)
        LANGUAGE sql STABLE AS $$
            SELECT pgblobs.effective_quota(p_user, p_default_quota) - coalesce(sum(live_bytes), 0),
                   p_default_quota_blobs - coalesce(sum(live_blobs), 0)
            FROM pgblobs.usage WHERE user_id = p_user
        $$
    """)
    op.execute("""
        CREATE INDEX blobs_tombstone_key ON pgblobs.blobs (blob_id, namespace, user_id)
        WHERE deleted_at IS NOT NULL
    """)
    # Arrays shorter than the names read as NULLs (unnest pads them): no
    # dates means now, no flags means none.
    op.execute(f"""
        CREATE FUNCTION pgblobs.insert_blob_rows({_ROW_ARRAYS})
        RETURNS void LANGUAGE plpgsql VOLATILE
        SET plan_cache_mode = force_custom_plan AS $$
        BEGIN
            PERFORM pgblobs.lock_users(p_users);
            DELETE FROM pgblobs.blobs AS b
            USING unnest(p_users, p_namespaces, p_blob_ids) AS k(user_id, namespace, blob_id)
            WHERE b.blob_id = k.blob_id AND b.namespace = k.namespace
              AND b.user_id = k.user_id AND b.deleted_at IS NOT NULL;
            WITH item AS (
                SELECT * FROM unnest(p_users, p_namespaces, p_blob_ids, p_oids, p_sizes,
                                     p_tags, p_sha256s, p_flags, p_dates)
                       AS i(user_id, namespace, blob_id, lo_oid, size, tag, sha256, flags,
                            created_at)
                WHERE blob_id IS NOT NULL
            ), stored AS (
                INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag,
                                           sha256, created_at)
                SELECT user_id, namespace, blob_id, lo_oid, size, tag, sha256,
                       coalesce(created_at, now())
                FROM item
                RETURNING id, user_id, namespace, blob_id, created_at
            )
            INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id, created_at,
                                            flag)
            SELECT s.id, s.user_id, s.namespace, s.blob_id, s.created_at, f.flag
            FROM stored AS s
            JOIN item USING (user_id, namespace, blob_id),
                 unnest(string_to_array(nullif(item.flags, ''), ',')) AS f(flag);
        END
        $$
    """)
    # Revision 0008's signature and meaning (import-fs and store_small_blobs
    # call it), now through the user lock like every writer.
    op.execute(f"""
        CREATE OR REPLACE FUNCTION pgblobs.insert_blobs(
            {_SMALL_ARRAYS}, p_dates timestamptz[], p_keep boolean[])
        RETURNS void LANGUAGE sql VOLATILE AS $$
            WITH item AS (
                SELECT * FROM unnest(p_users, p_namespaces, p_blob_ids, p_contents, p_tags,
                                     p_sha256s, p_flags, p_dates, p_keep)
                       AS i(user_id, namespace, blob_id, content, tag, sha256, flags,
                            created_at, keep)
                WHERE keep IS NOT false AND blob_id IS NOT NULL
            )
            SELECT pgblobs.insert_blob_rows(
                array_agg(user_id), array_agg(namespace), array_agg(blob_id),
                array_agg(lo_from_bytea(0, content)), array_agg(octet_length(content)::bigint),
                array_agg(tag), array_agg(sha256), array_agg(flags), array_agg(created_at))
            FROM item
            HAVING count(*) > 0
        $$
    """)
    op.execute(f"""
        CREATE FUNCTION pgblobs.store_small_blobs_v2(
            {_SMALL_ARRAYS}, p_default_quota bigint, p_default_quota_blobs bigint)
        RETURNS text[] LANGUAGE plpgsql VOLATILE
        SET plan_cache_mode = force_custom_plan AS $$
        DECLARE
            v_count  int := cardinality(p_blob_ids);
            v_status text[] := array_fill(NULL::text, ARRAY[cardinality(p_blob_ids)]);
            v_users  text[];  -- the users whose lock this batch holds
            v_live   int[];   -- positions whose name a live blob has
            v_user   text;
            v_bytes  bigint;  -- what the user may still store (NULL: no limit)
            v_blobs  bigint;
            v_taken  boolean;
        BEGIN
            -- Never wait for a lock: a user another writer holds is 'busy',
            -- sent again in a later batch, and the rest of this one goes on.
            SELECT coalesce(array_agg(name ORDER BY name), '{{}}') INTO v_users
            FROM (SELECT DISTINCT name FROM unnest(p_users) AS name ORDER BY name) AS users
            WHERE pg_try_advisory_xact_lock(pgblobs.user_lock_key(name));
            SELECT coalesce(array_agg(i.position::int), '{{}}') INTO v_live
            FROM unnest(p_users, p_namespaces, p_blob_ids)
                 WITH ORDINALITY AS i(user_id, namespace, blob_id, position)
            WHERE i.user_id = ANY (v_users)
              AND EXISTS (SELECT 1 FROM pgblobs.blobs AS b
                          WHERE b.blob_id = i.blob_id AND b.namespace = i.namespace
                            AND b.user_id = i.user_id AND b.deleted_at IS NULL);
            FOR i IN 1 .. v_count LOOP
                IF NOT p_users[i] = ANY (v_users) THEN v_status[i] := 'busy'; END IF;
            END LOOP;
            FOREACH v_user IN ARRAY v_users LOOP
                SELECT bytes, blobs INTO v_bytes, v_blobs
                FROM pgblobs.room(v_user, p_default_quota, p_default_quota_blobs);
                -- In order, each item against what the ones before it did.
                FOR i IN 1 .. v_count LOOP
                    CONTINUE WHEN p_users[i] <> v_user;
                    v_taken := i = ANY (v_live);
                    FOR j IN 1 .. i - 1 LOOP
                        v_taken := v_taken OR (v_status[j] = 'stored' AND p_users[j] = v_user
                            AND p_namespaces[j] = p_namespaces[i] AND p_blob_ids[j] = p_blob_ids[i]);
                    END LOOP;
                    IF v_taken THEN
                        v_status[i] := 'exists';
                    ELSIF octet_length(p_contents[i]) > v_bytes THEN
                        v_status[i] := 'quota';
                    ELSIF v_blobs < 1 THEN
                        v_status[i] := 'blobs';
                    ELSE
                        v_status[i] := 'stored';
                        v_bytes := v_bytes - octet_length(p_contents[i]);
                        v_blobs := v_blobs - 1;
                    END IF;
                END LOOP;
            END LOOP;
            PERFORM pgblobs.insert_blobs(
                p_users, p_namespaces, p_blob_ids, p_contents, p_tags, p_sha256s, p_flags,
                '{{}}',
                (SELECT array_agg(status = 'stored' ORDER BY n)
                 FROM unnest(v_status) WITH ORDINALITY AS u(status, n)));
            RETURN v_status;
        END
        $$
    """)
    op.execute(f"""
        CREATE FUNCTION pgblobs.store_blobs_v2(
            p_user text, p_namespace text, p_blob_ids text[], p_oids oid[], p_sizes bigint[],
            p_tags text[], p_sha256s bytea[], p_flags text[], p_default_quota bigint,
            p_default_quota_blobs bigint)
        RETURNS void LANGUAGE plpgsql VOLATILE
        SET plan_cache_mode = force_custom_plan AS $$
        DECLARE
            v_bytes bigint;
            v_blobs bigint;
        BEGIN
            PERFORM pgblobs.lock_users(ARRAY[p_user]);
            SELECT bytes, blobs INTO v_bytes, v_blobs
            FROM pgblobs.room(p_user, p_default_quota, p_default_quota_blobs);
            IF v_bytes < (SELECT sum(size) FROM unnest(p_sizes) AS size) THEN
                RAISE EXCEPTION 'the blobs do not fit in the quota of user %', p_user
                    USING ERRCODE = 'PB507';
            END IF;
            IF v_blobs < cardinality(p_blob_ids) THEN
                RAISE EXCEPTION 'user % has as many blobs as the quota allows', p_user
                    USING ERRCODE = 'PB507';
            END IF;
            -- A live blob already named so fails the whole lot on the live key.
            PERFORM pgblobs.insert_blob_rows(
                array_fill(p_user, ARRAY[cardinality(p_blob_ids)]),
                array_fill(p_namespace, ARRAY[cardinality(p_blob_ids)]),
                p_blob_ids, p_oids, p_sizes, p_tags, p_sha256s, p_flags, '{{}}');
        END
        $$
    """)


def downgrade():
    op.execute(
        "DROP FUNCTION pgblobs.store_blobs_v2(text, text, text[], oid[], bigint[], text[], "
        "bytea[], text[], bigint, bigint)"
    )
    op.execute(
        "DROP FUNCTION pgblobs.store_small_blobs_v2(text[], text[], text[], bytea[], text[], "
        "bytea[], text[], bigint, bigint)"
    )
    # insert_blobs as revision 0008 made it.
    op.execute("""
        CREATE OR REPLACE FUNCTION pgblobs.insert_blobs(
            p_users text[], p_namespaces text[], p_blob_ids text[], p_contents bytea[],
            p_tags text[], p_sha256s bytea[], p_flags text[], p_dates timestamptz[],
            p_keep boolean[])
        RETURNS void LANGUAGE sql VOLATILE AS $$
            WITH item AS (
                SELECT * FROM unnest(p_users, p_namespaces, p_blob_ids, p_contents, p_tags,
                                     p_sha256s, p_flags, p_dates, p_keep)
                       AS i(user_id, namespace, blob_id, content, tag, sha256, flags,
                            created_at, keep)
                WHERE keep IS NOT false AND blob_id IS NOT NULL
            ), stored AS (
                INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, lo_oid, size, tag,
                                           sha256, created_at)
                SELECT user_id, namespace, blob_id, lo_from_bytea(0, content),
                       octet_length(content), tag, sha256, coalesce(created_at, now())
                FROM item
                RETURNING id, user_id, namespace, blob_id, created_at
            )
            INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id, created_at,
                                            flag)
            SELECT s.id, s.user_id, s.namespace, s.blob_id, s.created_at, f.flag
            FROM stored AS s
            JOIN item USING (user_id, namespace, blob_id),
                 unnest(string_to_array(nullif(item.flags, ''), ',')) AS f(flag)
        $$
    """)
    op.execute(f"DROP FUNCTION pgblobs.insert_blob_rows({_ROW_ARRAYS})")
    op.execute("DROP INDEX pgblobs.blobs_tombstone_key")
    op.execute("DROP FUNCTION pgblobs.room(text, bigint, bigint)")
    op.execute("DROP FUNCTION pgblobs.lock_users(text[])")
    op.execute("DROP FUNCTION pgblobs.user_lock_key(text)")
