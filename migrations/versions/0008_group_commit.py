"""Group commit: small blobs stored a batch per statement, usage counted once
per statement, token changes announced to every node.

- ``pgblobs.store_small_blobs`` stores a batch of small blobs of any users in
  one statement (one transaction, one WAL flush). Each user's lock is taken
  once, in name order, so batches never wait on each other crosswise; each
  item gets its own status, so a duplicate or an over-quota blob fails only
  itself.
- The usage counters were kept by a row trigger: 25 rows of one user meant
  25 updates of one counter row. Statement triggers with transition tables
  update each (user, namespace) once per statement.
- Tokens: every change is sent on the channel ``pgblobs_tokens`` as
  ``user:NAME`` or ``service:NAME``, so nodes may cache valid tokens and
  forget them the moment one is revoked.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_USAGE_DELTA = {
    "INSERT": "SELECT user_id, namespace, 1 AS blobs, size AS bytes FROM new_rows "
    "WHERE deleted_at IS NULL",
    "DELETE": "SELECT user_id, namespace, -1 AS blobs, -size AS bytes FROM old_rows "
    "WHERE deleted_at IS NULL",
}
_USAGE_DELTA["UPDATE"] = f"{_USAGE_DELTA['INSERT']} UNION ALL {_USAGE_DELTA['DELETE']}"


def _apply_usage(delta):
    # Ordered, so two statements touching the same users update their
    # counter rows in the same order and cannot deadlock.
    return f"""
        INSERT INTO pgblobs.usage AS u (user_id, namespace, live_blobs, live_bytes)
        SELECT user_id, namespace, sum(blobs), sum(bytes) FROM ({delta}) AS delta
        GROUP BY user_id, namespace
        HAVING sum(blobs) <> 0 OR sum(bytes) <> 0
        ORDER BY user_id, namespace
        ON CONFLICT (user_id, namespace) DO UPDATE
        SET live_blobs = u.live_blobs + EXCLUDED.live_blobs,
            live_bytes = u.live_bytes + EXCLUDED.live_bytes;
    """


def upgrade():
    op.execute("DROP TRIGGER blobs_track_usage ON pgblobs.blobs")
    op.execute("DROP FUNCTION pgblobs.track_usage()")
    op.execute(f"""
        CREATE FUNCTION pgblobs.track_usage() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN {_apply_usage(_USAGE_DELTA["INSERT"])}
            ELSIF TG_OP = 'DELETE' THEN {_apply_usage(_USAGE_DELTA["DELETE"])}
            ELSE {_apply_usage(_USAGE_DELTA["UPDATE"])}
            END IF;
            RETURN NULL;
        END
        $$
    """)
    # A trigger with transition tables takes one event each.
    for event, tables in [
        ("INSERT", "NEW TABLE AS new_rows"),
        ("DELETE", "OLD TABLE AS old_rows"),
        ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    ]:
        op.execute(f"""
            CREATE TRIGGER blobs_track_usage_{event.lower()}
            AFTER {event} ON pgblobs.blobs REFERENCING {tables}
            FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.track_usage()
        """)

    # Rows, contents and flags of whole blobs, for a group commit and for
    # import-fs alike. An array shorter than the others reads as NULLs
    # (unnest pads it): no dates means now, no keep flags means every item.
    op.execute("""
        CREATE FUNCTION pgblobs.insert_blobs(
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

    op.execute("""
        CREATE FUNCTION pgblobs.announce_token_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- TG_ARGV: the kind of holder, and the column that names it.
            PERFORM pg_notify('pgblobs_tokens', TG_ARGV[0] || ':' ||
                (to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END) ->> TG_ARGV[1]));
            RETURN NULL;
        END
        $$
    """)
    for table, kind, column in [
        ("tokens", "user", "user_id"),
        ("service_tokens", "service", "service"),
    ]:
        op.execute(f"""
            CREATE TRIGGER {table}_announce AFTER INSERT OR UPDATE OR DELETE
            ON pgblobs.{table} FOR EACH ROW
            EXECUTE FUNCTION pgblobs.announce_token_change('{kind}', '{column}')
        """)


def downgrade():
    for table in ["tokens", "service_tokens"]:
        op.execute(f"DROP TRIGGER {table}_announce ON pgblobs.{table}")
    op.execute("DROP FUNCTION pgblobs.announce_token_change()")
    op.execute(
        "DROP FUNCTION pgblobs.store_small_blobs(text[], text[], text[], bytea[], "
        "text[], bytea[], text[], bigint)"
    )
    op.execute(
        "DROP FUNCTION pgblobs.insert_blobs(text[], text[], text[], bytea[], text[], "
        "bytea[], text[], timestamptz[], boolean[])"
    )
    for event in ["insert", "delete", "update"]:
        op.execute(f"DROP TRIGGER blobs_track_usage_{event} ON pgblobs.blobs")
    op.execute("DROP FUNCTION pgblobs.track_usage()")
    # The row trigger of revision 0004, as it was.
    op.execute("""
        CREATE FUNCTION pgblobs.track_usage() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.deleted_at IS NULL THEN
                UPDATE pgblobs.usage
                SET live_blobs = live_blobs - 1, live_bytes = live_bytes - OLD.size
                WHERE user_id = OLD.user_id AND namespace = OLD.namespace;
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.deleted_at IS NULL THEN
                INSERT INTO pgblobs.usage (user_id, namespace, live_blobs, live_bytes)
                VALUES (NEW.user_id, NEW.namespace, 1, NEW.size)
                ON CONFLICT (user_id, namespace) DO UPDATE
                SET live_blobs = pgblobs.usage.live_blobs + 1,
                    live_bytes = pgblobs.usage.live_bytes + EXCLUDED.live_bytes;
            END IF;
            RETURN NULL;
        END
        $$
    """)
    op.execute("""
        CREATE TRIGGER blobs_track_usage
        AFTER INSERT OR DELETE OR UPDATE OF user_id, namespace, size, deleted_at
        ON pgblobs.blobs FOR EACH ROW EXECUTE FUNCTION pgblobs.track_usage()
    """)
