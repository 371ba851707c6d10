"""Resumable uploads (tus 1.0, /uploads/{user}/): a blob's content arrives in
pieces, over any number of requests to any node, into a large object that
becomes the blob when its last byte is in.

- ``pgblobs.uploads`` holds one row per upload in progress: the blob's name,
  its declared length, the bytes received so far (``upload_offset``), the
  large object they are in, and when the upload expires. The name is
  reserved (``uploads_key``): one upload per name at a time.
- ``pgblobs.room`` now subtracts the uploads in progress: each reserves its
  whole declared length and one blob of the user's quota from its creation
  until it completes, is terminated or expires, so uploads that race for the
  last bytes cannot overshoot the quota, and neither can writes beside them.
  Nodes of the previous release call ``room`` too, and so honour it.
- ``pgblobs.create_upload`` checks, under the user's lock, that the name is
  free (no live blob, no upload), that the user has fewer than the allowed
  uploads in progress (PB429) and that the length fits (PB507), then makes
  the large object and the row.
- ``pgblobs.complete_upload`` turns an upload whose bytes are all in into
  its blob, in the transaction that wrote its last bytes: under the user's
  lock, the row goes and the blob row comes with the upload's large object.
  ``pgblobs.finished_uploads`` remembers the upload until its expiry, so a
  client that lost the answer to its last PATCH hears from HEAD that every
  byte is in (and the id is no longer reserved: the blob is live).
- ``pgblobs.end_uploads`` removes uploads and their large objects
  (termination, expiry, fsck --repair, account deletion), passing over any
  that a PATCH holds now: a PATCH holds its upload's advisory lock
  (``pgblobs.upload_lock_key``) from before it reads the row until it ends.
- ``pgblobs.refuse_reserved_names`` is an AFTER INSERT statement trigger on
  ``pgblobs.blobs``: a statement that makes a live blob of a name an upload
  has reserved fails with PB409, on every path (PUT, stream, deliveries,
  import-fs, SQL), nodes of the previous release included.
- ``refuse_closed_accounts`` also guards ``pgblobs.uploads``: no upload of a
  closed account can begin.

Nothing older code calls changes meaning: no code_floor.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_ROOM_SIGNATURE = """pgblobs.room(
            p_user text, p_default_quota bigint, p_default_quota_blobs bigint,
            OUT bytes bigint, OUT blobs bigint)"""


def upgrade():
    op.execute("""
        CREATE TABLE pgblobs.uploads (
            upload_id     text        PRIMARY KEY,
            user_id       text        NOT NULL,
            namespace     text        NOT NULL,
            blob_id       text        NOT NULL,
            -- Upload-Metadata as the client sent it, which HEAD answers with.
            upload_metadata text      NOT NULL,
            lo_oid        oid         NOT NULL,
            upload_length bigint      NOT NULL CHECK (upload_length >= 0),
            upload_offset bigint      NOT NULL DEFAULT 0,
            created_at    timestamptz NOT NULL DEFAULT now(),
            expires_at    timestamptz NOT NULL,
            CONSTRAINT uploads_offset_within_length
                CHECK (upload_offset BETWEEN 0 AND upload_length)
        )
    """)
    op.execute("""
        COMMENT ON TABLE pgblobs.uploads IS
            'Resumable uploads in progress: each reserves its blob''s name and its length '
            'of the user''s quota until it completes, is terminated or expires'
    """)
    op.execute("""
        CREATE UNIQUE INDEX uploads_key ON pgblobs.uploads (blob_id, namespace, user_id)
    """)
    op.execute("""
        CREATE INDEX uploads_by_user ON pgblobs.uploads (user_id) INCLUDE (upload_length)
    """)
    op.execute("CREATE INDEX uploads_by_expiry ON pgblobs.uploads (expires_at)")
    op.execute("""
        CREATE TABLE pgblobs.finished_uploads (
            upload_id       text        PRIMARY KEY,
            user_id         text        NOT NULL,
            upload_metadata text        NOT NULL,
            upload_length   bigint      NOT NULL,
            expires_at      timestamptz NOT NULL
        )
    """)
    op.execute("""
        COMMENT ON TABLE pgblobs.finished_uploads IS
            'Uploads that completed, until their expiry: a client that lost the answer to '
            'its last PATCH hears from HEAD that every byte is in'
    """)
    op.execute("CREATE INDEX finished_uploads_by_expiry ON pgblobs.finished_uploads (expires_at)")
    op.execute("CREATE INDEX finished_uploads_by_user ON pgblobs.finished_uploads (user_id)")
    op.execute(f"""
        CREATE OR REPLACE FUNCTION {_ROOM_SIGNATURE}
        LANGUAGE sql STABLE AS $$
            SELECT pgblobs.effective_quota(p_user, p_default_quota) - used.bytes - reserved.bytes,
                   p_default_quota_blobs - used.blobs - reserved.blobs
            FROM (SELECT coalesce(sum(live_bytes), 0) AS bytes, coalesce(sum(live_blobs), 0) AS blobs
                  FROM pgblobs.usage WHERE user_id = p_user) AS used,
                 (SELECT coalesce(sum(upload_length), 0) AS bytes, count(*) AS blobs
                  FROM pgblobs.uploads WHERE user_id = p_user) AS reserved
        $$
    """)
    op.execute("""
        CREATE FUNCTION pgblobs.upload_lock_key(p_upload_id text) RETURNS bigint
        LANGUAGE sql IMMUTABLE AS $$
            SELECT hashtextextended('pgblobs.upload:' || p_upload_id, 0)
        $$
    """)
    op.execute("""
        CREATE FUNCTION pgblobs.create_upload(
            p_upload_id text, p_user text, p_namespace text, p_blob_id text, p_metadata text,
            p_length bigint, p_expiry_seconds double precision, p_max_uploads int,
            p_default_quota bigint, p_default_quota_blobs bigint)
        RETURNS timestamptz LANGUAGE plpgsql VOLATILE
        SET plan_cache_mode = force_custom_plan AS $$
        DECLARE
            v_bytes   bigint;
            v_blobs   bigint;
            v_expires timestamptz := now() + make_interval(secs => p_expiry_seconds);
        BEGIN
            PERFORM pgblobs.lock_users(ARRAY[p_user]);
            IF EXISTS (SELECT 1 FROM pgblobs.blobs
                       WHERE blob_id = p_blob_id AND namespace = p_namespace
                         AND user_id = p_user AND deleted_at IS NULL) THEN
                RAISE EXCEPTION 'a live blob already has the id %', p_blob_id
                    USING ERRCODE = 'unique_violation', CONSTRAINT = 'blobs_live_key';
            END IF;
            IF EXISTS (SELECT 1 FROM pgblobs.uploads
                       WHERE blob_id = p_blob_id AND namespace = p_namespace
                         AND user_id = p_user) THEN
                RAISE EXCEPTION 'an upload in progress has reserved the id %', p_blob_id
                    USING ERRCODE = 'PB409';
            END IF;
            IF (SELECT count(*) FROM pgblobs.uploads WHERE user_id = p_user) >= p_max_uploads THEN
                RAISE EXCEPTION 'user % has % uploads in progress already', p_user, p_max_uploads
                    USING ERRCODE = 'PB429';
            END IF;
            SELECT bytes, blobs INTO v_bytes, v_blobs
            FROM pgblobs.room(p_user, p_default_quota, p_default_quota_blobs);
            IF v_bytes < p_length THEN
                RAISE EXCEPTION 'the upload does not fit in the quota of user %', p_user
                    USING ERRCODE = 'PB507';
            END IF;
            IF v_blobs < 1 THEN
                RAISE EXCEPTION 'user % has as many blobs as the quota allows', p_user
                    USING ERRCODE = 'PB507';
            END IF;
            INSERT INTO pgblobs.uploads (upload_id, user_id, namespace, blob_id, upload_metadata,
                                         lo_oid, upload_length, expires_at)
            VALUES (p_upload_id, p_user, p_namespace, p_blob_id, p_metadata, lo_create(0),
                    p_length, v_expires);
            IF p_length = 0 THEN
                -- Nothing to wait for: the blob is whole at once (the tag of no bytes is empty).
                PERFORM pgblobs.complete_upload(p_upload_id, '', sha256(''::bytea));
            END IF;
            RETURN v_expires;
        END
        $$
    """)
    op.execute("""
        CREATE FUNCTION pgblobs.complete_upload(p_upload_id text, p_tag text, p_sha256 bytea)
        RETURNS void LANGUAGE plpgsql VOLATILE
        SET plan_cache_mode = force_custom_plan AS $$
        DECLARE
            v_upload pgblobs.uploads;
        BEGIN
            SELECT * INTO STRICT v_upload FROM pgblobs.uploads WHERE upload_id = p_upload_id;
            -- The user's lock before the row's, as every writer takes them.
            PERFORM pgblobs.lock_users(ARRAY[v_upload.user_id]);
            DELETE FROM pgblobs.uploads WHERE upload_id = p_upload_id;
            INSERT INTO pgblobs.finished_uploads (upload_id, user_id, upload_metadata, upload_length,
                                                  expires_at)
            VALUES (p_upload_id, v_upload.user_id, v_upload.upload_metadata, v_upload.upload_length,
                    v_upload.expires_at);
            PERFORM pgblobs.insert_blob_rows(
                ARRAY[v_upload.user_id], ARRAY[v_upload.namespace], ARRAY[v_upload.blob_id],
                ARRAY[v_upload.lo_oid], ARRAY[v_upload.upload_length], ARRAY[p_tag],
                ARRAY[p_sha256], '{}', '{}');
        END
        $$
    """)
    op.execute("""
        CREATE FUNCTION pgblobs.end_uploads(p_upload_ids text[])
        RETURNS text[] LANGUAGE plpgsql VOLATILE
        SET plan_cache_mode = force_custom_plan AS $$
        DECLARE
            v_ended text[];
            v_oids  oid[];
        BEGIN
            -- An upload a PATCH holds now is passed over: its bytes are on their way.
            WITH free AS (
                SELECT id FROM unnest(p_upload_ids) AS id
                WHERE pg_try_advisory_xact_lock(pgblobs.upload_lock_key(id))
            ), ended AS (
                DELETE FROM pgblobs.uploads AS u USING free WHERE u.upload_id = free.id
                RETURNING u.upload_id, u.lo_oid
            )
            SELECT coalesce(array_agg(upload_id), '{}'), coalesce(array_agg(lo_oid), '{}')
            INTO v_ended, v_oids FROM ended;
            -- A large object already lost (fsck's broken uploads) is skipped, since
            -- lo_unlink would fail the whole statement.
            PERFORM lo_unlink(o.lo) FROM unnest(v_oids) AS o(lo)
            WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata AS m
                          WHERE m.oid = o.lo);
            RETURN v_ended;
        END
        $$
    """)
    op.execute("""
        CREATE FUNCTION pgblobs.refuse_reserved_names() RETURNS trigger
        LANGUAGE plpgsql VOLATILE
        SET plan_cache_mode = force_custom_plan AS $$
        DECLARE
            v_blob_id text;
        BEGIN
            SELECT n.blob_id INTO v_blob_id FROM new_rows AS n
            JOIN pgblobs.uploads AS u
              ON u.blob_id = n.blob_id AND u.namespace = n.namespace AND u.user_id = n.user_id
            WHERE n.deleted_at IS NULL
            LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'an upload in progress has reserved the id %', v_blob_id
                    USING ERRCODE = 'PB409';
            END IF;
            RETURN NULL;
        END
        $$
    """)
    op.execute("""
        CREATE TRIGGER blobs_refuse_reserved_names
            AFTER INSERT ON pgblobs.blobs REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.refuse_reserved_names()
    """)
    op.execute("""
        CREATE TRIGGER uploads_refuse_closed_accounts
            AFTER INSERT ON pgblobs.uploads REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.refuse_closed_accounts()
    """)


def downgrade():
    op.execute("DROP TRIGGER uploads_refuse_closed_accounts ON pgblobs.uploads")
    op.execute("DROP TRIGGER blobs_refuse_reserved_names ON pgblobs.blobs")
    op.execute("DROP FUNCTION pgblobs.refuse_reserved_names()")
    op.execute("DROP FUNCTION pgblobs.end_uploads(text[])")
    op.execute("DROP FUNCTION pgblobs.complete_upload(text, text, bytea)")
    op.execute(
        "DROP FUNCTION pgblobs.create_upload(text, text, text, text, text, bigint, "
        "double precision, int, bigint, bigint)"
    )
    op.execute("DROP FUNCTION pgblobs.upload_lock_key(text)")
    # room as revision 0009 wrote it, before any upload reserved room.
    op.execute(f"""
        CREATE OR REPLACE FUNCTION {_ROOM_SIGNATURE}
        LANGUAGE sql STABLE AS $$
            SELECT pgblobs.effective_quota(p_user, p_default_quota) - coalesce(sum(live_bytes), 0),
                   p_default_quota_blobs - coalesce(sum(live_blobs), 0)
            FROM pgblobs.usage WHERE user_id = p_user
        $$
    """)
    # Uploads in progress go with their large objects.
    op.execute("SELECT lo_unlink(lo_oid) FROM pgblobs.uploads")
    op.execute("DROP TABLE pgblobs.uploads")
    op.execute("DROP TABLE pgblobs.finished_uploads")
