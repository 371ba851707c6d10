-- Every SQL statement pgblobs runs, each under a name.
-- Parameters use psycopg2's %(name)s style. "(read)" after a name marks a statement that
-- changes nothing, so it may be sent again when its connection is lost. The schema itself
-- (tables, indexes, the put_blob function) is owned by migrations/.

-- name: schema_version (read)
-- The alembic revision the database is at (no such table: alembic never ran here).
SELECT version_num FROM pgblobs.alembic_version;

-- name: write_precheck (read)
-- Before reading a body: the size and sha256 of the live blob that has the id (NULL: none),
-- how many bytes and blobs the user may still store (NULL: no limit), and whether an upload
-- in progress has reserved the id.
SELECT live.size AS live_size, live.sha256 AS live_sha256,
       room.bytes AS room, room.blobs AS room_blobs,
       EXISTS (SELECT 1 FROM pgblobs.uploads AS u
               WHERE u.blob_id = %(blob_id)s AND u.namespace = %(namespace)s
                 AND u.user_id = %(user)s) AS reserved
FROM pgblobs.room(%(user)s, %(default_quota)s, %(default_quota_blobs)s) AS room
LEFT JOIN pgblobs.blobs AS live
  ON live.user_id = %(user)s AND live.namespace = %(namespace)s
 AND live.blob_id = %(blob_id)s AND live.deleted_at IS NULL;

-- name: write_many_precheck (read)
-- Before reading several bodies: how many bytes and blobs the user may still store (NULL: no
-- limit), on one row per id of %(blob_ids)s a live blob already has, with that blob's size and
-- sha256 (one row of NULLs there when none is taken).
SELECT live.blob_id AS taken, live.size, live.sha256,
       room.bytes AS room, room.blobs AS room_blobs
FROM pgblobs.room(%(user)s, %(default_quota)s, %(default_quota_blobs)s) AS room
LEFT JOIN pgblobs.blobs AS live
  ON live.user_id = %(user)s AND live.namespace = %(namespace)s
 AND live.blob_id = ANY (%(blob_ids)s::text[]) AND live.deleted_at IS NULL;

-- name: live_digests (read)
-- Size and sha256 of the live blobs among %(blob_ids)s, on the primary: a write refused at
-- its commit (the id taken meanwhile) is done if it repeated one's very bytes.
SELECT blob_id, size, sha256 FROM pgblobs.blobs
WHERE user_id = %(user)s AND namespace = %(namespace)s
  AND blob_id = ANY (%(blob_ids)s::text[]) AND deleted_at IS NULL;

-- name: live_head (read)
-- The first %(length)s bytes of the live blob, for a retried write whose head the store
-- writes itself (a delivery's preamble, stamped with its time).
SELECT lo_get(lo_oid, 0, %(length)s) AS head FROM pgblobs.blobs
WHERE user_id = %(user)s AND namespace = %(namespace)s
  AND blob_id = %(blob_id)s AND deleted_at IS NULL;

-- name: put_small_blobs
-- A batch of whole small blobs, of any users, in one statement and one commit; one
-- status per item: 'stored', 'exists' (a live blob has the id), 'quota' (bytes), 'blobs'
-- (the user's blob count) or 'busy' (another writer holds the user's lock: send it again).
-- %(flags)s holds each item's flags joined by commas.
SELECT pgblobs.store_small_blobs_v2(%(users)s::text[], %(namespaces)s::text[],
                                    %(blob_ids)s::text[], %(contents)s::bytea[],
                                    %(tags)s::text[], %(sha256s)s::bytea[], %(flags)s::text[],
                                    %(default_quota)s, %(default_quota_blobs)s)
       AS statuses;

-- name: put_blobs
-- The rows (and flags, joined by commas) of one user's streamed blobs whose large objects
-- were written in this transaction: all of them, or an error (over quota, an id taken).
SELECT pgblobs.store_blobs_v2(%(user)s, %(namespace)s, %(blob_ids)s::text[], %(oids)s::oid[],
                              %(sizes)s::bigint[], %(tags)s::text[], %(sha256s)s::bytea[],
                              %(flags)s::text[], %(default_quota)s, %(default_quota_blobs)s);

-- name: open_blob_batch (read)
-- Live blobs looked up together (reads that arrived at once, of any users): each
-- found item's position in the arrays, its row (its version), size and tag, and its
-- whole content when small enough to inline, so a small read is part of one statement.
SELECT item.position, b.id, b.size, b.tag,
       CASE WHEN b.size <= %(inline_limit)s THEN lo_get(b.lo_oid) END AS content
FROM unnest(%(users)s::text[], %(namespaces)s::text[], %(blob_ids)s::text[])
     WITH ORDINALITY AS item(user_id, namespace, blob_id, position)
JOIN pgblobs.blobs AS b
  ON b.blob_id = item.blob_id AND b.namespace = item.namespace
 AND b.user_id = item.user_id AND b.deleted_at IS NULL;

-- name: open_blobs (read)
-- Row, size and tag of the live blobs among %(blob_ids)s (one batch of a stream download).
SELECT blob_id, id, size, tag
FROM pgblobs.blobs
WHERE user_id = %(user)s AND namespace = %(namespace)s
  AND blob_id = ANY (%(blob_ids)s::text[]) AND deleted_at IS NULL;

-- name: version_bytes (read)
-- Bytes %(start)s to %(start)s + %(length)s of one blob version, if it is still live.
SELECT lo_get(lo_oid, %(start)s, %(length)s) AS content FROM pgblobs.blobs
WHERE id = %(row)s AND deleted_at IS NULL;

-- name: versions_content (read)
-- The whole content of the blob versions %(rows)s that are still live (a batch of small
-- blobs of a stream download).
SELECT id, lo_get(lo_oid) AS content FROM pgblobs.blobs
WHERE id = ANY (%(rows)s::bigint[]) AND deleted_at IS NULL;

-- name: version_large_object (read)
-- The large object of one blob version, if it is still live.
SELECT lo_oid FROM pgblobs.blobs WHERE id = %(row)s AND deleted_at IS NULL;

-- name: delete_blob
-- Make a live blob a tombstone, drop its flags and unlink its content, atomically, under the
-- user's lock (pgblobs.delete_blob); no row means no such blob.
SELECT 1 AS deleted
WHERE pgblobs.delete_blob(%(user)s, %(namespace)s, %(blob_id)s);

-- name: blob_info (read)
-- Size, tag and flags of one live blob.
SELECT b.size, b.tag,
       ARRAY(SELECT f.flag FROM pgblobs.blob_flags AS f
             WHERE f.blob_row = b.id ORDER BY f.flag) AS flags
FROM pgblobs.blobs AS b
WHERE b.user_id = %(user)s AND b.namespace = %(namespace)s
  AND b.blob_id = %(blob_id)s AND b.deleted_at IS NULL;

-- name: set_flags
-- Replace a live blob's flags with %(flags)s, under the user's lock (pgblobs.set_flags); no row
-- means no such blob.
SELECT 1 AS flagged
WHERE pgblobs.set_flags(%(user)s, %(namespace)s, %(blob_id)s, %(flags)s::text[]);

-- name: changes (read)
-- The change feed (pgblobs/feed.py): a user's blobs changed after the number %(since)s, in
-- %(namespace)s only unless it is NULL, oldest change first, at most %(limit)s + 1 (the one
-- more says more are ready); each in its state now, flags included. Every row also carries
-- the user's horizon (the newest number purge removed), the user's newest number (in any
-- namespace: a cursor may go on to it) and the newest number handed out (no cursor is
-- beyond it); with no change, one row of them alone. Read from the primary only (the numbers
-- must never go backwards for a client).
SELECT horizon.purged_through,
       coalesce(pg_sequence_last_value('pgblobs.change_numbers'), 0) AS newest,
       (SELECT coalesce(max(u.last_change), 0) FROM pgblobs.blobs AS u
        WHERE u.user_id = %(user)s) AS user_newest,
       c.blob_id, c.namespace, c.size, c.tag, c.deleted, c.stored, c.last_change, c.changed_at,
       c.flags
FROM (SELECT coalesce(max(purged_through), 0) AS purged_through
      FROM pgblobs.change_horizons WHERE user_id = %(user)s) AS horizon
LEFT JOIN LATERAL (
    SELECT b.blob_id, b.namespace, b.size, b.tag, b.deleted_at IS NOT NULL AS deleted,
           b.stored_change > %(since)s AS stored, b.last_change, b.changed_at,
           ARRAY(SELECT f.flag FROM pgblobs.blob_flags AS f
                 WHERE f.blob_row = b.id ORDER BY f.flag) AS flags
    FROM pgblobs.blobs AS b
    WHERE b.user_id = %(user)s AND b.last_change > %(since)s
      AND (%(namespace)s::text IS NULL OR b.namespace = %(namespace)s::text)
    ORDER BY b.last_change
    LIMIT %(limit)s + 1
) AS c ON true
ORDER BY c.last_change;

-- name: claim_blobs
-- Move up to %(limit)s of a user's PENDING blobs in a namespace to PROCESSING, oldest first,
-- each leased for %(lease)s seconds; their ids, oldest first (pgblobs.claim_blobs).
SELECT pgblobs.claim_blobs(%(user)s, %(namespace)s, %(limit)s, %(lease)s) AS blob_ids;

-- name: expire_claims
-- End up to %(batch)s leases whose time is up; how many blobs went back to PENDING.
SELECT pgblobs.expire_claims(%(batch)s) AS back;

-- name: count_live (read)
-- Live blobs of a user in a namespace (the counters that migrations/0004's trigger keeps).
SELECT coalesce((SELECT live_blobs FROM pgblobs.usage
                 WHERE user_id = %(user)s AND namespace = %(namespace)s), 0) AS live_blobs;

-- name: list_live (read)
-- Ids of a user's live blobs in a namespace, oldest first, as one array (one row
-- parses far faster than a row per id).
SELECT ARRAY(
    SELECT blob_id FROM pgblobs.blobs
    WHERE user_id = %(user)s AND namespace = %(namespace)s AND deleted_at IS NULL
    ORDER BY created_at, id
) AS blob_ids;

-- name: list_tombstones (read)
-- Ids of a user's tombstones in a namespace, oldest first, as one array.
SELECT ARRAY(
    SELECT blob_id FROM pgblobs.blobs
    WHERE user_id = %(user)s AND namespace = %(namespace)s AND deleted_at IS NOT NULL
    ORDER BY created_at, id
) AS blob_ids;

-- name: list_flagged (read)
-- Ids of a user's live blobs in a namespace that carry %(flag)s, oldest first, as
-- one array (only live blobs have flags, so the flag rows answer alone).
SELECT ARRAY(
    SELECT blob_id FROM pgblobs.blob_flags
    WHERE user_id = %(user)s AND namespace = %(namespace)s AND flag = %(flag)s
    ORDER BY created_at, blob_row
) AS blob_ids;

-- name: list_live_page (read)
-- list_live a page at a time (list_blob_pages): the ids of at most %(page_size)s rows
-- past the key (%(after_date)s, %(after_row)s) of the date index, in its order, and
-- the key of the page's last row to go on from. One index range scan per page; the
-- ids as one array, since one row parses far faster than a row per id.
WITH page AS (
    SELECT blob_id, created_at, id FROM pgblobs.blobs
    WHERE user_id = %(user)s AND namespace = %(namespace)s AND deleted_at IS NULL
      AND (created_at, id) > (%(after_date)s, %(after_row)s)
    ORDER BY created_at, id LIMIT %(page_size)s
)
SELECT coalesce(array_agg(blob_id ORDER BY created_at, id), '{}') AS blob_ids,
       max(created_at) AS last_date, (array_agg(id ORDER BY created_at DESC, id DESC))[1] AS last_row
FROM page;

-- name: list_live_page_desc (read)
-- list_live_page newest first: the date index scanned backwards, before the key.
WITH page AS (
    SELECT blob_id, created_at, id FROM pgblobs.blobs
    WHERE user_id = %(user)s AND namespace = %(namespace)s AND deleted_at IS NULL
      AND (created_at, id) < (%(after_date)s, %(after_row)s)
    ORDER BY created_at DESC, id DESC LIMIT %(page_size)s
)
SELECT coalesce(array_agg(blob_id ORDER BY created_at DESC, id DESC), '{}') AS blob_ids,
       min(created_at) AS last_date, (array_agg(id ORDER BY created_at, id))[1] AS last_row
FROM page;

-- name: list_tombstones_page (read)
-- list_tombstones a page at a time, as list_live_page.
WITH page AS (
    SELECT blob_id, created_at, id FROM pgblobs.blobs
    WHERE user_id = %(user)s AND namespace = %(namespace)s AND deleted_at IS NOT NULL
      AND (created_at, id) > (%(after_date)s, %(after_row)s)
    ORDER BY created_at, id LIMIT %(page_size)s
)
SELECT coalesce(array_agg(blob_id ORDER BY created_at, id), '{}') AS blob_ids,
       max(created_at) AS last_date, (array_agg(id ORDER BY created_at DESC, id DESC))[1] AS last_row
FROM page;

-- name: list_tombstones_page_desc (read)
-- list_tombstones_page newest first, as list_live_page_desc.
WITH page AS (
    SELECT blob_id, created_at, id FROM pgblobs.blobs
    WHERE user_id = %(user)s AND namespace = %(namespace)s AND deleted_at IS NOT NULL
      AND (created_at, id) < (%(after_date)s, %(after_row)s)
    ORDER BY created_at DESC, id DESC LIMIT %(page_size)s
)
SELECT coalesce(array_agg(blob_id ORDER BY created_at DESC, id DESC), '{}') AS blob_ids,
       min(created_at) AS last_date, (array_agg(id ORDER BY created_at, id))[1] AS last_row
FROM page;

-- name: list_flagged_page (read)
-- list_flagged a page at a time, as list_live_page (the key: the flag row's date and blob row).
WITH page AS (
    SELECT blob_id, created_at, blob_row AS id FROM pgblobs.blob_flags
    WHERE user_id = %(user)s AND namespace = %(namespace)s AND flag = %(flag)s
      AND (created_at, blob_row) > (%(after_date)s, %(after_row)s)
    ORDER BY created_at, blob_row LIMIT %(page_size)s
)
SELECT coalesce(array_agg(blob_id ORDER BY created_at, id), '{}') AS blob_ids,
       max(created_at) AS last_date, (array_agg(id ORDER BY created_at DESC, id DESC))[1] AS last_row
FROM page;

-- name: list_flagged_page_desc (read)
-- list_flagged_page newest first, as list_live_page_desc.
WITH page AS (
    SELECT blob_id, created_at, blob_row AS id FROM pgblobs.blob_flags
    WHERE user_id = %(user)s AND namespace = %(namespace)s AND flag = %(flag)s
      AND (created_at, blob_row) < (%(after_date)s, %(after_row)s)
    ORDER BY created_at DESC, blob_row DESC LIMIT %(page_size)s
)
SELECT coalesce(array_agg(blob_id ORDER BY created_at DESC, id DESC), '{}') AS blob_ids,
       min(created_at) AS last_date, (array_agg(id ORDER BY created_at, id))[1] AS last_row
FROM page;

-- name: total_storage_kib (read)
-- A user's live bytes across namespaces, in KiB rounded up.
SELECT (coalesce(sum(live_bytes), 0)::bigint + 1023) / 1024 AS kib FROM pgblobs.usage
WHERE user_id = %(user)s;

-- name: beat
-- The primary's heartbeat: the next value of its counter (from 1, making the one row if it is
-- missing), which a replica has once it has replayed every commit before this one
-- (db/replicas.py).
INSERT INTO pgblobs.heartbeat AS h (beat, beaten_at) VALUES (1, now())
ON CONFLICT (one) DO UPDATE SET beat = h.beat + 1, beaten_at = now()
RETURNING beat;

-- name: replica_state (read)
-- Is this server a replica (in recovery), and which heartbeat of the primary has it replayed
-- (0: none)?
SELECT pg_is_in_recovery() AS in_recovery,
       coalesce((SELECT beat FROM pgblobs.heartbeat), 0) AS beat;

-- name: ping (read)
-- Is the database answering?
SELECT 1 AS answering;

-- name: token_digests (read)
-- The SHA-256 digests of a user's tokens.
SELECT token_sha256 FROM pgblobs.tokens WHERE user_id = %(user)s;

-- name: add_token
-- Store the digest of a new token.
INSERT INTO pgblobs.tokens (user_id, token_sha256) VALUES (%(user)s, %(digest)s) RETURNING id;

-- name: revoke_tokens
-- Forget every token of a user; the count says how many there were.
WITH revoked AS (DELETE FROM pgblobs.tokens WHERE user_id = %(user)s RETURNING 1)
SELECT count(*) AS revoked FROM revoked;

-- name: service_token_digests (read)
-- The SHA-256 digests of a service's tokens (an MX delivering mail, say).
SELECT token_sha256 FROM pgblobs.service_tokens WHERE service = %(service)s;

-- name: add_service_token
-- Store the digest of a new service token.
INSERT INTO pgblobs.service_tokens (service, token_sha256) VALUES (%(service)s, %(digest)s)
RETURNING id;

-- name: revoke_service_tokens
-- Forget every token of a service; the count says how many there were.
WITH revoked AS (DELETE FROM pgblobs.service_tokens WHERE service = %(service)s RETURNING 1)
SELECT count(*) AS revoked FROM revoked;

-- name: set_quota
-- Override the default quota of one user (NULL: unlimited).
INSERT INTO pgblobs.quotas (user_id, quota_bytes) VALUES (%(user)s, %(quota_bytes)s)
ON CONFLICT (user_id) DO UPDATE SET quota_bytes = excluded.quota_bytes;

-- name: clear_quota
-- Drop a user's override, so the server default applies again.
DELETE FROM pgblobs.quotas WHERE user_id = %(user)s;

-- name: show_quota (read)
-- A user's override (has_override false: the server default applies) and live bytes.
SELECT q.user_id IS NOT NULL AS has_override, q.quota_bytes,
       (SELECT coalesce(sum(live_bytes), 0) FROM pgblobs.usage
        WHERE user_id = %(user)s) AS used_bytes
FROM (SELECT 1) AS one
LEFT JOIN pgblobs.quotas AS q ON q.user_id = %(user)s;

-- name: report_usage (read)
-- Usage per user, biggest first, with the uploads in progress (a user who has only those too):
-- the bytes they have received and the bytes they reserve; %(user)s NULL for everyone,
-- %(top)s NULL for no limit.
WITH uploading AS (
    SELECT user_id, count(*) AS uploads, sum(upload_offset)::bigint AS received_bytes,
           sum(upload_length)::bigint AS reserved_bytes
    FROM pgblobs.uploads
    WHERE %(user)s::text IS NULL OR user_id = %(user)s
    GROUP BY user_id
), used AS (
    SELECT * FROM pgblobs.usage_by_user WHERE %(user)s::text IS NULL OR user_id = %(user)s
)
SELECT coalesce(b.user_id, u.user_id) AS user_id, coalesce(b.live_blobs, 0) AS live_blobs,
       coalesce(b.live_bytes, 0) AS live_bytes, coalesce(b.live_kib, 0) AS live_kib,
       coalesce(b.tombstones, 0) AS tombstones, b.first_write, b.last_write,
       CASE WHEN q.user_id IS NULL THEN %(default_quota)s ELSE q.quota_bytes END
           AS quota_bytes,
       coalesce(u.uploads, 0) AS uploads, coalesce(u.received_bytes, 0) AS received_bytes,
       coalesce(u.reserved_bytes, 0) AS reserved_bytes
FROM used AS b
FULL JOIN uploading AS u ON u.user_id = b.user_id
LEFT JOIN pgblobs.quotas AS q ON q.user_id = coalesce(b.user_id, u.user_id)
ORDER BY live_bytes DESC, user_id
LIMIT %(top)s;

-- name: report_daily (read)
-- Blobs and bytes written and deleted per day, over the last %(days)s days, newest first.
SELECT day, blobs_written, bytes_written, blobs_deleted, bytes_deleted
FROM pgblobs.daily_activity
WHERE day > current_date - %(days)s::int
ORDER BY day DESC;

-- name: count_old_tombstones (read)
-- Tombstones deleted before %(cutoff)s.
SELECT count(*) AS tombstones FROM pgblobs.blobs WHERE deleted_at < %(cutoff)s;

-- name: purge_tombstones
-- Remove one batch of tombstones deleted before %(cutoff)s (short, so locks stay short), and
-- raise their users' change horizons past them: a feed cursor older than a purged delete
-- must list again. How many went.
WITH gone AS (
    DELETE FROM pgblobs.blobs WHERE id IN (
        SELECT id FROM pgblobs.blobs WHERE deleted_at < %(cutoff)s
        ORDER BY deleted_at LIMIT %(batch)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING user_id, last_change
), horizons AS (
    INSERT INTO pgblobs.change_horizons AS h (user_id, purged_through)
    SELECT user_id, max(last_change) FROM gone GROUP BY user_id ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE
    SET purged_through = greatest(h.purged_through, EXCLUDED.purged_through)
)
SELECT count(*) AS purged FROM gone;

-- name: large_objects (read)
-- Large objects in this database, counted (or, unless %(exact)s, estimated from the
-- catalog's statistics, which a scrape can afford at any size), and their bytes on disk.
SELECT CASE WHEN %(exact)s OR c.reltuples < 0
            THEN (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata)
            ELSE c.reltuples::bigint END AS large_objects,
       pg_total_relation_size('pg_catalog.pg_largeobject') AS disk_bytes
FROM pg_catalog.pg_class AS c
WHERE c.oid = 'pg_catalog.pg_largeobject_metadata'::regclass;

-- name: orphan_large_objects (read)
-- Large objects of the current role that no blob row and no upload in progress references.
SELECT m.oid FROM pg_largeobject_metadata AS m
WHERE m.lomowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
  AND NOT EXISTS (SELECT 1 FROM pgblobs.blobs AS b WHERE b.lo_oid = m.oid)
  AND NOT EXISTS (SELECT 1 FROM pgblobs.uploads AS u WHERE u.lo_oid = m.oid)
ORDER BY m.oid;

-- name: uploads_for_check (read)
-- Uploads in progress that are past their expiry by more than %(grace)s seconds (no node
-- swept them), or whose large object is missing (stored NULL) or holds fewer bytes than
-- upload_offset says were received. One statement, so the rows and the large objects are
-- seen in one snapshot (a read-only descriptor reads as of it); the descriptors close with it.
SELECT * FROM (
    SELECT u.upload_id, u.user_id, u.namespace, u.blob_id, u.upload_offset, u.expires_at,
           u.expires_at < now() - make_interval(secs => %(grace)s) AS abandoned,
           CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata AS m
                             WHERE m.oid = u.lo_oid)
                -- 262144 is INV_READ: lo_lseek64 to the end says how many bytes it holds.
                THEN lo_lseek64(lo_open(u.lo_oid, 262144), 0, 2) END AS stored
    FROM pgblobs.uploads AS u
) AS checked
WHERE abandoned OR stored IS NULL OR stored < upload_offset
ORDER BY user_id, namespace, blob_id;

-- name: end_uploads
-- Remove uploads in progress and their large objects (pgblobs.end_uploads), but those a
-- PATCH holds now; the ids removed.
SELECT pgblobs.end_uploads(%(upload_ids)s::text[]) AS ended;

-- name: unlink_large_object
-- Remove one large object.
SELECT lo_unlink(%(oid)s) AS unlinked;

-- name: rows_without_content (read)
-- Live blobs whose large object is gone.
SELECT b.id, b.user_id, b.namespace, b.blob_id FROM pgblobs.blobs AS b
WHERE b.deleted_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM pg_largeobject_metadata AS m WHERE m.oid = b.lo_oid)
ORDER BY b.id;

-- name: bury_row
-- Turn a live blob whose content is lost into a tombstone (dropping its flags, as
-- delete_blob does), so clients learn it is gone.
-- The user's lock comes before the row's (as in pgblobs.delete_blob).
WITH locked AS MATERIALIZED (
    SELECT pgblobs.lock_users(ARRAY(SELECT user_id FROM pgblobs.blobs WHERE id = %(id)s))
), unflagged AS (
    DELETE FROM pgblobs.blob_flags WHERE blob_row = %(id)s AND EXISTS (SELECT FROM locked)
)
UPDATE pgblobs.blobs SET deleted_at = now(), lo_oid = NULL
WHERE id = %(id)s AND deleted_at IS NULL AND EXISTS (SELECT FROM locked);

-- name: live_blobs_for_check (read)
-- Every live blob with what its content should be, in id order, after %(after)s.
SELECT id, user_id, namespace, blob_id, lo_oid, size, sha256 FROM pgblobs.blobs
WHERE deleted_at IS NULL AND id > %(after)s
ORDER BY id LIMIT %(batch)s;

-- name: live_totals (read)
-- How many live blobs and bytes there are, for progress bars.
SELECT count(*) AS blobs, coalesce(sum(size), 0) AS bytes FROM pgblobs.blobs
WHERE deleted_at IS NULL;

-- name: import_state (read)
-- What pgblobs holds under each of these names (positions in the arrays, from 1): the live
-- row, else the newest tombstone, with its size, dates and flags; no row for a name it has
-- never held. One probe of blobs_live_key and one of blobs_tombstone_key per name.
SELECT item.position, held.id, held.size, held.created_at, held.deleted_at,
       ARRAY(SELECT f.flag FROM pgblobs.blob_flags AS f
             WHERE f.blob_row = held.id ORDER BY f.flag) AS flags
FROM unnest(%(users)s::text[], %(namespaces)s::text[], %(blob_ids)s::text[])
     WITH ORDINALITY AS item(user_id, namespace, blob_id, position)
CROSS JOIN LATERAL (
    SELECT * FROM (
        (SELECT b.id, b.size, b.created_at, b.deleted_at, 0 AS rank FROM pgblobs.blobs AS b
         WHERE b.blob_id = item.blob_id AND b.namespace = item.namespace
           AND b.user_id = item.user_id AND b.deleted_at IS NULL)
        UNION ALL
        (SELECT b.id, b.size, b.created_at, b.deleted_at, 1 AS rank FROM pgblobs.blobs AS b
         WHERE b.blob_id = item.blob_id AND b.namespace = item.namespace
           AND b.user_id = item.user_id AND b.deleted_at IS NOT NULL
         ORDER BY b.id DESC LIMIT 1)
    ) AS candidates
    ORDER BY rank LIMIT 1
) AS held
ORDER BY item.position;

-- name: import_small_blobs
-- Small blobs from another store, as they were (their own dates, flags joined by commas),
-- content inline, replacing tombstones of their names; no quota applies.
SELECT pgblobs.insert_blobs(%(users)s::text[], %(namespaces)s::text[], %(blob_ids)s::text[],
                            %(contents)s::bytea[], %(tags)s::text[], %(sha256s)s::bytea[],
                            %(flags)s::text[], %(dates)s::timestamptz[], '{}'::boolean[]);

-- name: import_large_blobs
-- Large blobs from another store, their contents already in the large objects %(oids)s, as
-- they were (their own dates, flags joined by commas), replacing tombstones of their names;
-- no quota applies.
SELECT pgblobs.insert_blob_rows(%(users)s::text[], %(namespaces)s::text[], %(blob_ids)s::text[],
                                %(oids)s::oid[], %(sizes)s::bigint[], %(tags)s::text[],
                                %(sha256s)s::bytea[], %(flags)s::text[],
                                %(dates)s::timestamptz[]);

-- name: import_tombstones
-- Tombstones from another store, dated as they were, under their users' locks (taken before
-- any row is written, as every writer does).
WITH locked AS MATERIALIZED (SELECT pgblobs.lock_users(%(users)s::text[]))
INSERT INTO pgblobs.blobs (user_id, namespace, blob_id, size, created_at, deleted_at)
SELECT user_id, namespace, blob_id, 0, deleted_at, deleted_at
FROM unnest(%(users)s::text[], %(namespaces)s::text[], %(blob_ids)s::text[],
            %(dates)s::timestamptz[]) AS i(user_id, namespace, blob_id, deleted_at)
WHERE EXISTS (SELECT FROM locked);

-- name: import_delete_blobs
-- What delete_blob does, for the live rows %(rows)s that another store deleted: each a
-- tombstone dated %(dates)s (when that store deleted it, so a later write there is seen as
-- later), its flags dropped and its content unlinked; the usage triggers count them out. The
-- users' locks come before the rows' (as in pgblobs.delete_blob).
WITH locked AS MATERIALIZED (
    SELECT pgblobs.lock_users(ARRAY(SELECT DISTINCT user_id FROM pgblobs.blobs
                                    WHERE id = ANY (%(rows)s::bigint[])))
), target AS (
    SELECT b.id, b.lo_oid, item.deleted_at
    FROM unnest(%(rows)s::bigint[], %(dates)s::timestamptz[]) AS item(id, deleted_at)
    JOIN pgblobs.blobs AS b ON b.id = item.id AND b.deleted_at IS NULL
    WHERE EXISTS (SELECT FROM locked)
    FOR UPDATE OF b
), tombstone AS (
    UPDATE pgblobs.blobs AS b SET deleted_at = target.deleted_at, lo_oid = NULL
    FROM target WHERE b.id = target.id
), unflagged AS (
    DELETE FROM pgblobs.blob_flags AS f USING target WHERE f.blob_row = target.id
)
SELECT lo_unlink(lo_oid) FROM target;

-- name: export_batch (read)
-- Up to %(batch)s blob rows (live and tombstones) after the row %(after)s, in row order, of
-- every user or only %(user)s, with their flags and the sha256 that tells a current export.
SELECT b.id, b.user_id, b.namespace, b.blob_id, b.lo_oid, b.size, b.sha256, b.created_at,
       b.deleted_at,
       ARRAY(SELECT f.flag FROM pgblobs.blob_flags AS f
             WHERE f.blob_row = b.id ORDER BY f.flag) AS flags
FROM pgblobs.blobs AS b
WHERE b.id > %(after)s AND (%(user)s::text IS NULL OR b.user_id = %(user)s)
ORDER BY b.id
LIMIT %(batch)s;

-- name: usage_drift (read)
-- (user, namespace) whose counters in pgblobs.usage differ from their live blobs.
WITH actual AS (
    SELECT user_id, namespace, count(*) AS live_blobs, sum(size)::bigint AS live_bytes
    FROM pgblobs.blobs WHERE deleted_at IS NULL GROUP BY user_id, namespace
)
SELECT coalesce(a.user_id, u.user_id) AS user_id, coalesce(a.namespace, u.namespace) AS namespace
FROM actual AS a
FULL JOIN pgblobs.usage AS u ON u.user_id = a.user_id AND u.namespace = a.namespace
WHERE coalesce(a.live_blobs, 0) <> coalesce(u.live_blobs, 0)
   OR coalesce(a.live_bytes, 0) <> coalesce(u.live_bytes, 0)
ORDER BY 1, 2;

-- name: recount_usage
-- Set one (user, namespace)'s counters from its live blobs.
INSERT INTO pgblobs.usage (user_id, namespace, live_blobs, live_bytes)
SELECT %(user)s, %(namespace)s, count(*), coalesce(sum(size), 0) FROM pgblobs.blobs
WHERE user_id = %(user)s AND namespace = %(namespace)s AND deleted_at IS NULL
ON CONFLICT (user_id, namespace) DO UPDATE
SET live_blobs = EXCLUDED.live_blobs, live_bytes = EXCLUDED.live_bytes;

-- name: lock_users
-- Take the per-user lock of each of %(users)s (name order, until the transaction ends), as
-- every writer of blob rows does before it inserts them.
SELECT pgblobs.lock_users(%(users)s::text[]);

-- name: account_contents (read)
-- What pgblobs holds of a user: live blobs and bytes (the usage counters), tombstones,
-- tokens, quota and usage rows, uploads in progress and finished ones, and whether the
-- account is closed and when it was emptied.
SELECT (SELECT coalesce(sum(live_blobs), 0) FROM pgblobs.usage WHERE user_id = %(user)s)
           AS blobs,
       (SELECT coalesce(sum(live_bytes), 0) FROM pgblobs.usage WHERE user_id = %(user)s)
           AS bytes,
       (SELECT count(*) FROM pgblobs.blobs
        WHERE user_id = %(user)s AND deleted_at IS NOT NULL) AS tombstones,
       (SELECT count(*) FROM pgblobs.tokens WHERE user_id = %(user)s) AS tokens,
       (SELECT count(*) FROM pgblobs.quotas WHERE user_id = %(user)s) AS quota_rows,
       (SELECT count(*) FROM pgblobs.usage WHERE user_id = %(user)s) AS usage_rows,
       (SELECT count(*) FROM pgblobs.uploads WHERE user_id = %(user)s) AS uploads,
       (SELECT count(*) FROM pgblobs.finished_uploads WHERE user_id = %(user)s)
           AS finished_uploads,
       c.user_id IS NOT NULL AS closed, c.emptied_at
FROM (SELECT 1) AS one
LEFT JOIN pgblobs.closed_accounts AS c ON c.user_id = %(user)s;

-- name: close_account
-- Close a user's account: from this commit on, no blob row or token of theirs is accepted
-- (the trigger refuse_closed_accounts), and every feed cursor of theirs is 410: the user's
-- change horizon goes past every number handed out, by taking one, since the deletion
-- removes changes without a trace and a name given back must not look unchanged to an old
-- device. No row: it was closed already.
WITH horizon AS (
    INSERT INTO pgblobs.change_horizons AS h (user_id, purged_through)
    VALUES (%(user)s, nextval('pgblobs.change_numbers'))
    ON CONFLICT (user_id) DO UPDATE
    SET purged_through = greatest(h.purged_through, EXCLUDED.purged_through)
)
INSERT INTO pgblobs.closed_accounts (user_id) VALUES (%(user)s)
ON CONFLICT (user_id) DO NOTHING;

-- name: delete_account_batch
-- Remove up to %(batch)s blob rows of a user (live ones first, then tombstones), with their
-- flags and large objects, in one statement and so one short transaction; how many of each
-- went, and the live bytes. A large object already lost (fsck's broken rows) is skipped,
-- since lo_unlink would fail the batch.
WITH doomed AS (
    SELECT id FROM (
        (SELECT id FROM pgblobs.blobs
         WHERE user_id = %(user)s AND deleted_at IS NULL LIMIT %(batch)s)
        UNION ALL
        (SELECT id FROM pgblobs.blobs
         WHERE user_id = %(user)s AND deleted_at IS NOT NULL LIMIT %(batch)s)
    ) AS candidates
    LIMIT %(batch)s
), unflagged AS (
    DELETE FROM pgblobs.blob_flags WHERE blob_row = ANY (ARRAY(SELECT id FROM doomed))
    RETURNING 1
), gone AS (
    DELETE FROM pgblobs.blobs AS b USING doomed WHERE b.id = doomed.id
    RETURNING b.lo_oid, b.size, b.deleted_at
), unlinked AS (
    SELECT lo_unlink(lo_oid) FROM gone
    WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata AS m
                  WHERE m.oid = gone.lo_oid)
)
SELECT count(*) FILTER (WHERE deleted_at IS NULL) AS blobs,
       count(*) FILTER (WHERE deleted_at IS NOT NULL) AS tombstones,
       coalesce(sum(size) FILTER (WHERE deleted_at IS NULL), 0)::bigint AS bytes,
       (SELECT count(*) FROM unflagged) AS flags,
       (SELECT count(*) FROM unlinked) AS large_objects
FROM gone;

-- name: forget_usage
-- Drop a user's usage counters (once none of their blob rows is left).
DELETE FROM pgblobs.usage WHERE user_id = %(user)s;

-- name: end_account_uploads
-- Remove up to %(batch)s uploads in progress of a user with their large objects, but those a
-- PATCH holds now (pgblobs.end_uploads); how many went, how many of those had a large object
-- (fsck's broken ones have none), and how many of the user's are left.
WITH candidates AS MATERIALIZED (
    SELECT u.upload_id,
           EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata AS m
                   WHERE m.oid = u.lo_oid) AS stored
    FROM pgblobs.uploads AS u WHERE u.user_id = %(user)s
), ended AS MATERIALIZED (
    SELECT unnest(pgblobs.end_uploads(ARRAY(
        SELECT upload_id FROM candidates ORDER BY upload_id LIMIT %(batch)s))) AS upload_id
)
SELECT (SELECT count(*) FROM ended) AS uploads,
       (SELECT count(*) FROM ended JOIN candidates USING (upload_id) WHERE stored)
           AS large_objects,
       (SELECT count(*) FROM candidates) - (SELECT count(*) FROM ended) AS remaining;

-- name: forget_finished_uploads
-- Forget a user's finished uploads (their blobs are gone with the account).
DELETE FROM pgblobs.finished_uploads WHERE user_id = %(user)s;

-- name: mark_account_emptied
-- Note that nothing of a closed account is left.
UPDATE pgblobs.closed_accounts SET emptied_at = now() WHERE user_id = %(user)s;

-- name: create_upload
-- Begin a resumable upload (pgblobs.create_upload): when it expires unless a PATCH comes.
SELECT pgblobs.create_upload(%(upload_id)s, %(user)s, %(namespace)s, %(blob_id)s,
                             %(metadata)s, %(length)s, %(expiry)s, %(max_uploads)s,
                             %(default_quota)s, %(default_quota_blobs)s) AS expires_at;

-- name: upload_state (read)
-- One upload of a user in progress, or finished (its offset is its length), and not past its
-- expiry; on the primary.
SELECT upload_id, upload_metadata, lo_oid, upload_length, upload_offset, expires_at
FROM pgblobs.uploads
WHERE upload_id = %(upload_id)s AND user_id = %(user)s AND expires_at > now()
UNION ALL
SELECT upload_id, upload_metadata, NULL, upload_length, upload_length, expires_at
FROM pgblobs.finished_uploads
WHERE upload_id = %(upload_id)s AND user_id = %(user)s AND expires_at > now();

-- name: hold_upload
-- Take the upload's advisory lock for this session, unless another session has it (a PATCH
-- in progress); released by release_upload, or when the connection ends.
SELECT pg_try_advisory_lock(pgblobs.upload_lock_key(%(upload_id)s)) AS held;

-- name: release_upload
SELECT pg_advisory_unlock(pgblobs.upload_lock_key(%(upload_id)s)) AS released;

-- name: advance_upload
-- A PATCH's step is in: the upload's new offset, and a new expiry from now.
UPDATE pgblobs.uploads
SET upload_offset = %(offset)s, expires_at = now() + make_interval(secs => %(expiry)s)
WHERE upload_id = %(upload_id)s
RETURNING expires_at;

-- name: complete_upload
-- The upload's last bytes are in (this transaction): it becomes its blob.
SELECT pgblobs.complete_upload(%(upload_id)s, %(tag)s, %(sha256)s);

-- name: terminate_upload
-- Remove a user's upload and its large object, unless a PATCH holds it now, or forget a
-- finished one (its blob stays); the ids removed (none: no such upload, or held).
WITH forgotten AS (
    DELETE FROM pgblobs.finished_uploads
    WHERE upload_id = %(upload_id)s AND user_id = %(user)s
    RETURNING upload_id
)
SELECT pgblobs.end_uploads(ARRAY(SELECT upload_id FROM pgblobs.uploads
                                 WHERE upload_id = %(upload_id)s AND user_id = %(user)s))
       || ARRAY(SELECT upload_id FROM forgotten) AS ended;

-- name: expire_uploads
-- Remove up to %(batch)s uploads past their expiry (oldest first) with their large objects,
-- but those a PATCH holds now, and forget finished uploads past theirs; how many uploads in
-- progress went.
WITH forgotten AS (
    DELETE FROM pgblobs.finished_uploads
    WHERE upload_id = ANY (ARRAY(SELECT upload_id FROM pgblobs.finished_uploads
                                 WHERE expires_at <= now()
                                 ORDER BY expires_at LIMIT %(batch)s))
)
SELECT cardinality(pgblobs.end_uploads(ARRAY(
           SELECT upload_id FROM pgblobs.uploads WHERE expires_at <= now()
           ORDER BY expires_at LIMIT %(batch)s))) AS removed;

-- name: uploads_in_progress (read)
-- Uploads in progress in the whole database, of how many users, the bytes they have received
-- so far and the bytes they reserve (their whole lengths).
SELECT count(*) AS uploads, count(DISTINCT user_id) AS users,
       coalesce(sum(upload_offset), 0) AS received_bytes,
       coalesce(sum(upload_length), 0) AS reserved_bytes
FROM pgblobs.uploads;

-- name: upload_of_blob (read)
-- The upload in progress that has reserved a blob's name, if one has.
SELECT upload_id, upload_metadata, lo_oid, upload_length, upload_offset, expires_at
FROM pgblobs.uploads
WHERE blob_id = %(blob_id)s AND namespace = %(namespace)s AND user_id = %(user)s
  AND expires_at > now();
