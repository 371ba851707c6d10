-- Every SQL statement pgblobs runs, each under a name.
-- Parameters use psycopg2's %(name)s style. The schema itself (tables,
-- indexes, the put_blob function) is owned by migrations/.

-- name: schema_present
-- Whether alembic has ever run here (its version table lives in our schema).
SELECT to_regclass('pgblobs.alembic_version') IS NOT NULL;

-- name: schema_version
-- The alembic revision the database is at.
SELECT version_num FROM pgblobs.alembic_version;

-- name: write_precheck
-- Before reading a body: is the id taken, and how many bytes may the user still store (NULL: no limit).
SELECT EXISTS (
           SELECT 1 FROM pgblobs.blobs
           WHERE user_id = %(user)s AND namespace = %(namespace)s
             AND blob_id = %(blob_id)s AND deleted_at IS NULL
       ) AS taken,
       pgblobs.effective_quota(%(user)s, %(default_quota)s) - (
           SELECT coalesce(sum(size), 0) FROM pgblobs.blobs
           WHERE user_id = %(user)s AND deleted_at IS NULL
       ) AS room;

-- name: put_small_blob
-- A whole small blob in one statement: content, quota check and row commit together.
SELECT pgblobs.put_blob(%(user)s, %(namespace)s, %(blob_id)s, lo_from_bytea(0, %(content)s),
                        %(size)s, %(tag)s, %(sha256)s, %(default_quota)s);

-- name: put_blob
-- Commit a streamed blob whose large object was written in this transaction.
SELECT pgblobs.put_blob(%(user)s, %(namespace)s, %(blob_id)s, %(oid)s,
                        %(size)s, %(tag)s, %(sha256)s, %(default_quota)s);

-- name: open_blob
-- A live blob's size, tag and large object; its (ranged) content too when it is small enough to inline.
SELECT size, tag, lo_oid,
       CASE WHEN size <= %(inline_limit)s THEN
           lo_get(lo_oid, %(start)s,
                  greatest(0, least(coalesce(%(end)s, size), size) - %(start)s)::int)
       END AS content
FROM pgblobs.blobs
WHERE user_id = %(user)s AND namespace = %(namespace)s
  AND blob_id = %(blob_id)s AND deleted_at IS NULL;

-- name: delete_blob
-- Make a live blob a tombstone, drop its flags and unlink its content, atomically; no row means no such blob.
WITH target AS (
    SELECT id, lo_oid FROM pgblobs.blobs
    WHERE user_id = %(user)s AND namespace = %(namespace)s
      AND blob_id = %(blob_id)s AND deleted_at IS NULL
    FOR UPDATE
), tombstone AS (
    UPDATE pgblobs.blobs AS b SET deleted_at = now(), lo_oid = NULL
    FROM target WHERE b.id = target.id
), unflagged AS (
    DELETE FROM pgblobs.blob_flags AS f USING target WHERE f.blob_row = target.id
)
SELECT lo_unlink(lo_oid) FROM target;

-- name: blob_info
-- Size, tag and flags of one live blob.
SELECT b.size, b.tag,
       ARRAY(SELECT f.flag FROM pgblobs.blob_flags AS f
             WHERE f.blob_row = b.id ORDER BY f.flag) AS flags
FROM pgblobs.blobs AS b
WHERE b.user_id = %(user)s AND b.namespace = %(namespace)s
  AND b.blob_id = %(blob_id)s AND b.deleted_at IS NULL;

-- name: set_flags
-- Replace a live blob's flags with %(flags)s; no row means no such blob.
WITH target AS (
    SELECT id, user_id, namespace FROM pgblobs.blobs
    WHERE user_id = %(user)s AND namespace = %(namespace)s
      AND blob_id = %(blob_id)s AND deleted_at IS NULL
    FOR UPDATE
), dropped AS (
    DELETE FROM pgblobs.blob_flags AS f USING target
    WHERE f.blob_row = target.id AND f.flag <> ALL (%(flags)s::text[])
), added AS (
    INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, flag)
    SELECT target.id, target.user_id, target.namespace, new_flag
    FROM target, unnest(%(flags)s::text[]) AS new_flag
    ON CONFLICT DO NOTHING
)
SELECT id FROM target;

-- name: count_live
-- Live blobs of a user in a namespace.
SELECT count(*) FROM pgblobs.blobs
WHERE user_id = %(user)s AND namespace = %(namespace)s AND deleted_at IS NULL;

-- name: list_live
-- Ids of a user's live blobs in a namespace, oldest first.
SELECT blob_id FROM pgblobs.blobs
WHERE user_id = %(user)s AND namespace = %(namespace)s AND deleted_at IS NULL
ORDER BY created_at, id;

-- name: list_tombstones
-- Ids of a user's tombstones in a namespace, oldest first.
SELECT blob_id FROM pgblobs.blobs
WHERE user_id = %(user)s AND namespace = %(namespace)s AND deleted_at IS NOT NULL
ORDER BY created_at, id;

-- name: list_flagged
-- Ids of a user's live blobs in a namespace that carry %(flag)s, oldest first.
SELECT b.blob_id
FROM pgblobs.blob_flags AS f
JOIN pgblobs.blobs AS b ON b.id = f.blob_row
WHERE f.user_id = %(user)s AND f.namespace = %(namespace)s AND f.flag = %(flag)s
  AND b.deleted_at IS NULL
ORDER BY b.created_at, b.id;

-- name: total_storage_kib
-- A user's live bytes across namespaces, in KiB rounded up.
SELECT (coalesce(sum(size), 0) + 1023) / 1024 FROM pgblobs.blobs
WHERE user_id = %(user)s AND deleted_at IS NULL;

-- name: ping
-- Is the database answering?
SELECT 1;

-- name: token_digests
-- The SHA-256 digests of a user's tokens.
SELECT token_sha256 FROM pgblobs.tokens WHERE user_id = %(user)s;

-- name: add_token
-- Store the digest of a new token.
INSERT INTO pgblobs.tokens (user_id, token_sha256) VALUES (%(user)s, %(digest)s) RETURNING id;

-- name: revoke_tokens
-- Forget every token of a user; the count says how many there were.
WITH revoked AS (DELETE FROM pgblobs.tokens WHERE user_id = %(user)s RETURNING 1)
SELECT count(*) FROM revoked;

-- name: set_quota
-- Override the default quota of one user (NULL: unlimited).
INSERT INTO pgblobs.quotas (user_id, quota_bytes) VALUES (%(user)s, %(quota_bytes)s)
ON CONFLICT (user_id) DO UPDATE SET quota_bytes = excluded.quota_bytes;

-- name: clear_quota
-- Drop a user's override, so the server default applies again.
DELETE FROM pgblobs.quotas WHERE user_id = %(user)s;

-- name: show_quota
-- A user's override (has_override false: the server default applies) and live bytes.
SELECT q.user_id IS NOT NULL AS has_override, q.quota_bytes,
       (SELECT coalesce(sum(size), 0) FROM pgblobs.blobs
        WHERE user_id = %(user)s AND deleted_at IS NULL) AS used_bytes
FROM (SELECT 1) AS one
LEFT JOIN pgblobs.quotas AS q ON q.user_id = %(user)s;
