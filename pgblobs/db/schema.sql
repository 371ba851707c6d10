-- The pgblobs schema as it is after the newest revision (migrations/versions/), top to bottom.
--
-- `pgblobs db upgrade` loads this file into an empty database and stamps it with the head
-- revision; the migrations serve databases that already exist. tests/test_schema_file.py
-- builds one database from the migrations and one from this file and compares their
-- catalogs (`pg_dump --schema-only`) and seed rows, so the two never drift: a new revision
-- changes both. Function bodies are compared as they are written (lines trimmed), so a body
-- here reads exactly as the revision that defined it last wrote it.
--
-- Functions whose meaning changes get a new versioned name (store_small_blobs_v2): nodes of
-- the previous release call the old name while the cluster is upgraded (pgblobs/db/schema.py).

CREATE SCHEMA IF NOT EXISTS pgblobs;

-- Roles belong to the whole cluster: another database may have made it already.
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgblobs_reporting') THEN
        CREATE ROLE pgblobs_reporting NOLOGIN;
    END IF;
END $$;


-- Blobs ------------------------------------------------------------------------------------

-- Change numbers, handed out under the user's lock (pgblobs.number_change), so a user's
-- changes are numbered in the order they commit.
CREATE SEQUENCE pgblobs.change_numbers AS bigint;

-- One row per blob: its content is a large object; a tombstone keeps the name (so clients
-- learn of the delete) and no content.
CREATE TABLE pgblobs.blobs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     text        NOT NULL,
    namespace   text        NOT NULL,
    blob_id     text        NOT NULL,
    lo_oid      oid,
    size        bigint      NOT NULL DEFAULT 0 CHECK (size >= 0),
    tag         text,
    sha256      bytea,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    -- The change feed (revision 0014): the number the row was stored with, the number of its
    -- latest change (pgblobs.number_change), and when that change was made.
    stored_change bigint      NOT NULL,
    last_change   bigint      NOT NULL,
    changed_at    timestamptz NOT NULL,
    -- A live blob always has content; a tombstone never keeps any.
    CONSTRAINT blobs_live_has_content CHECK (
        (deleted_at IS NULL AND lo_oid IS NOT NULL AND tag IS NOT NULL AND sha256 IS NOT NULL)
        OR (deleted_at IS NOT NULL AND lo_oid IS NULL)
    )
);
COMMENT ON TABLE pgblobs.blobs IS 'One row per blob; rows with deleted_at set are tombstones';

-- The indexes in the order the migrations made them: before any statistics the planner
-- breaks ties between indexes by that order, and single-blob statements must pick the live
-- key (tests/test_schema.py).
-- Listings by date, as index-only scans, a page at a time.
CREATE INDEX blobs_live_by_date
    ON pgblobs.blobs (user_id, namespace, created_at, id) INCLUDE (blob_id, size)
    WHERE deleted_at IS NULL;
CREATE INDEX blobs_tombstones_by_date
    ON pgblobs.blobs (user_id, namespace, created_at, id) INCLUDE (blob_id)
    WHERE deleted_at IS NOT NULL;
-- purge walks tombstones by age; fsck looks rows up by large object.
CREATE INDEX blobs_tombstones_by_deletion ON pgblobs.blobs (deleted_at)
    WHERE deleted_at IS NOT NULL;
CREATE INDEX blobs_by_large_object ON pgblobs.blobs (lo_oid) WHERE lo_oid IS NOT NULL;
-- At most one live blob per name, led by the blob id so that single-blob statements find
-- their row through it whatever the planner's statistics say (revision 0007).
CREATE UNIQUE INDEX blobs_live_key
    ON pgblobs.blobs (blob_id, namespace, user_id) WHERE deleted_at IS NULL;
-- Reviving a name (writing an id a tombstone has) is one probe however many tombstones.
CREATE INDEX blobs_tombstone_key
    ON pgblobs.blobs (blob_id, namespace, user_id) WHERE deleted_at IS NOT NULL;
-- A user's changes after a cursor, in their order (the change feed).
CREATE INDEX blobs_changes ON pgblobs.blobs (user_id, last_change);

-- Flags of live blobs (deleting a blob drops them). Each row carries the blob's id and date,
-- so filter_flag is one index-only scan of blob_flags_listing.
CREATE TABLE pgblobs.blob_flags (
    blob_row    bigint NOT NULL REFERENCES pgblobs.blobs (id) ON DELETE CASCADE,
    user_id     text   NOT NULL,
    namespace   text   NOT NULL,
    flag        text   NOT NULL
        CHECK (flag IN ('PENDING', 'PROCESSING', 'PROCESSED', 'FAILED')),
    blob_id     text   NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (blob_row, flag)
);
CREATE INDEX blob_flags_listing
    ON pgblobs.blob_flags (user_id, namespace, flag, created_at, blob_row) INCLUDE (blob_id);

-- The lease of each claimed blob (POST /claim/{user}): when it ends, a blob still carrying
-- PROCESSING goes back to PENDING (pgblobs.expire_claims). A row outlives the PROCESSING
-- flag it leases until its end, when it is simply dropped: setting other flags or deleting
-- the blob ends a lease without touching this table.
CREATE TABLE pgblobs.claims (
    blob_row     bigint      PRIMARY KEY REFERENCES pgblobs.blobs (id) ON DELETE CASCADE,
    user_id      text        NOT NULL,
    lease_until  timestamptz NOT NULL
);
-- The leases that ended, oldest first, with the users whose locks ending them takes.
CREATE INDEX claims_by_lease_end ON pgblobs.claims (lease_until) INCLUDE (user_id);


-- Quotas and usage -------------------------------------------------------------------------

-- Per-user overrides of the server's default quota in bytes.
CREATE TABLE pgblobs.quotas (
    user_id      text PRIMARY KEY,
    quota_bytes  bigint CHECK (quota_bytes >= 0)
);
COMMENT ON COLUMN pgblobs.quotas.quota_bytes IS
    'Overrides the server default for this user; NULL means unlimited';

-- Live blobs and bytes per (user, namespace), kept by the track_usage triggers below, so
-- count, get_total_storage and the quota read a few rows instead of every live blob.
CREATE TABLE pgblobs.usage (
    user_id     text   NOT NULL,
    namespace   text   NOT NULL,
    live_blobs  bigint NOT NULL DEFAULT 0,
    live_bytes  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, namespace)
);


-- Tokens -----------------------------------------------------------------------------------

-- Users' tokens: 256 random bits, kept only as SHA-256 digests (a slow password hash would
-- only cost every request).
CREATE TABLE pgblobs.tokens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       text        NOT NULL,
    token_sha256  bytea       NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tokens_by_user ON pgblobs.tokens (user_id);

-- Services' tokens (an MX delivering mail), kept apart from users' tokens.
CREATE TABLE pgblobs.service_tokens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    service       text        NOT NULL,
    token_sha256  bytea       NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX service_tokens_by_service ON pgblobs.service_tokens (service);


-- Closed accounts --------------------------------------------------------------------------

-- Users whose account `pgblobs user delete` closed (emptied_at: when it finished): the
-- trigger refuse_closed_accounts below fails any statement that adds a blob row or a token
-- of theirs, so a write in flight cannot make again what the deletion removes.
CREATE TABLE pgblobs.closed_accounts (
    user_id    text PRIMARY KEY,
    closed_at  timestamptz NOT NULL DEFAULT now(),
    emptied_at timestamptz
);
COMMENT ON TABLE pgblobs.closed_accounts IS
    'Users whose account pgblobs user delete closed: no blob or token of theirs is '
    'accepted; deleting the row gives the name back';


-- The change feed -------------------------------------------------------------------------

-- Per user, the newest change number that pgblobs purge removed with its tombstone: a feed
-- cursor below it has missed a delete, and is answered 410.
CREATE TABLE pgblobs.change_horizons (
    user_id        text   PRIMARY KEY,
    purged_through bigint NOT NULL
);
COMMENT ON TABLE pgblobs.change_horizons IS
    'Per user, the newest change number pgblobs purge removed with a tombstone: '
    'a feed cursor below it has missed a delete';


-- Resumable uploads ------------------------------------------------------------------------

-- One row per upload in progress (tus, /uploads/{user}/): the bytes received so far are in
-- its large object. It reserves its blob's name (uploads_key) and, through pgblobs.room, its
-- whole length and one blob of the user's quota, until it completes, is terminated or expires.
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
);
COMMENT ON TABLE pgblobs.uploads IS
    'Resumable uploads in progress: each reserves its blob''s name and its length '
    'of the user''s quota until it completes, is terminated or expires';
CREATE UNIQUE INDEX uploads_key ON pgblobs.uploads (blob_id, namespace, user_id);
CREATE INDEX uploads_by_user ON pgblobs.uploads (user_id) INCLUDE (upload_length);
CREATE INDEX uploads_by_expiry ON pgblobs.uploads (expires_at);

-- Uploads that completed, until their expiry: a client that lost the answer to its last PATCH
-- hears from HEAD that every byte is in. They reserve nothing (their blob is live).
CREATE TABLE pgblobs.finished_uploads (
    upload_id       text        PRIMARY KEY,
    user_id         text        NOT NULL,
    upload_metadata text        NOT NULL,
    upload_length   bigint      NOT NULL,
    expires_at      timestamptz NOT NULL
);
COMMENT ON TABLE pgblobs.finished_uploads IS
    'Uploads that completed, until their expiry: a client that lost the answer to '
    'its last PATCH hears from HEAD that every byte is in';
CREATE INDEX finished_uploads_by_expiry ON pgblobs.finished_uploads (expires_at);
-- An account's deletion finds them.
CREATE INDEX finished_uploads_by_user ON pgblobs.finished_uploads (user_id);


-- Replicas ---------------------------------------------------------------------------------

-- One row (the first beat makes it, so there is no seed row): a counter the primary bumps,
-- which tells how far behind a read replica really is (db/replicas.py).
CREATE TABLE pgblobs.heartbeat (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    beat       bigint      NOT NULL,
    beaten_at  timestamptz NOT NULL
);


-- The per-user lock and the quota room: each written once, called by every writer ---------

-- The key of a user's advisory lock, the one spelling of it.
CREATE FUNCTION pgblobs.user_lock_key(p_user text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT hashtextextended('pgblobs.user:' || p_user, 0)
$$;

-- The lock every writer of blob rows takes before it inserts them, so two writers of one
-- user never race on a name or a quota; each distinct user once, in name order, so two
-- writers never wait on each other crosswise.
CREATE FUNCTION pgblobs.lock_users(p_users text[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(pgblobs.user_lock_key(name))
    FROM (SELECT DISTINCT name FROM unnest(p_users) AS name ORDER BY name) AS users;
END
$$;

-- A user's quota in bytes: the override if there is one, else the server's default.
CREATE FUNCTION pgblobs.effective_quota(p_user text, p_default bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN q.user_id IS NULL THEN p_default ELSE q.quota_bytes END
    FROM (SELECT 1) AS one
    LEFT JOIN pgblobs.quotas AS q ON q.user_id = p_user
$$;

-- The bytes and the blobs a user may still store (NULL: no limit), the one place the quota
-- arithmetic is written: live blobs count, and so does every upload in progress, for its whole
-- declared length and one blob (revision 0015).
CREATE FUNCTION pgblobs.room(
    p_user text, p_default_quota bigint, p_default_quota_blobs bigint,
    OUT bytes bigint, OUT blobs bigint)
LANGUAGE sql STABLE AS $$
    SELECT pgblobs.effective_quota(p_user, p_default_quota) - used.bytes - reserved.bytes,
           p_default_quota_blobs - used.blobs - reserved.blobs
    FROM (SELECT coalesce(sum(live_bytes), 0) AS bytes, coalesce(sum(live_blobs), 0) AS blobs
          FROM pgblobs.usage WHERE user_id = p_user) AS used,
         (SELECT coalesce(sum(upload_length), 0) AS bytes, count(*) AS blobs
          FROM pgblobs.uploads WHERE user_id = p_user) AS reserved
$$;


-- Writing blobs ----------------------------------------------------------------------------
-- The write functions run with plan_cache_mode = force_custom_plan: plpgsql keeps a generic
-- plan made on the table as it was (empty, on a new database) until it is analysed, and a
-- plan that scans an empty table scans it still at 100,000 rows.

-- Every writer's last step: rows and flags of whole blobs whose contents are large objects
-- already, under the users' locks, replacing tombstones of the same names (writing an id
-- again revives it). Arrays shorter than the names read as NULLs (unnest pads them): no
-- dates means now, no flags (joined by commas) means none.
CREATE FUNCTION pgblobs.insert_blob_rows(
    p_users text[], p_namespaces text[], p_blob_ids text[], p_oids oid[],
    p_sizes bigint[], p_tags text[], p_sha256s bytea[], p_flags text[],
    p_dates timestamptz[])
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
$$;

-- Whole small blobs with their contents inline: each item whose p_keep is not false becomes
-- a large object and a row (import-fs, with its own dates; the group commit, with p_keep
-- saying which items it stores).
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
    )
    SELECT pgblobs.insert_blob_rows(
        array_agg(user_id), array_agg(namespace), array_agg(blob_id),
        array_agg(lo_from_bytea(0, content)), array_agg(octet_length(content)::bigint),
        array_agg(tag), array_agg(sha256), array_agg(flags), array_agg(created_at))
    FROM item
    HAVING count(*) > 0
$$;

-- The group commit: a batch of small blobs of any users in one statement, one status per
-- item ('stored', 'exists', 'quota', 'blobs' or 'busy'). It never waits for a user's lock:
-- a user another writer holds is 'busy' and sent again in a later batch, so one user's long
-- write never stalls other users' batches. Each item is judged, in order, against what the
-- items before it actually did.
CREATE FUNCTION pgblobs.store_small_blobs_v2(
    p_users text[], p_namespaces text[], p_blob_ids text[], p_contents bytea[],
    p_tags text[], p_sha256s bytea[], p_flags text[], p_default_quota bigint,
    p_default_quota_blobs bigint)
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
    SELECT coalesce(array_agg(name ORDER BY name), '{}') INTO v_users
    FROM (SELECT DISTINCT name FROM unnest(p_users) AS name ORDER BY name) AS users
    WHERE pg_try_advisory_xact_lock(pgblobs.user_lock_key(name));
    SELECT coalesce(array_agg(i.position::int), '{}') INTO v_live
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
        '{}',
        (SELECT array_agg(status = 'stored' ORDER BY n)
         FROM unnest(v_status) WITH ORDINALITY AS u(status, n)));
    RETURN v_status;
END
$$;

-- The rows of one user's streamed blobs (one blob, or a whole stream upload), waiting for
-- the user's lock: all of them, or an error (PB507 over quota, the live key for a name
-- taken).
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
        p_blob_ids, p_oids, p_sizes, p_tags, p_sha256s, p_flags, '{}');
END
$$;

-- Deleting a blob and replacing its flags: the user's lock first, as every writer takes it,
-- then the row's (pgblobs.number_change would take the user's after the row's, and a writer
-- holding the user's lock while it waits for the row would deadlock with it). True when there
-- was a live blob.
CREATE FUNCTION pgblobs.delete_blob(p_user text, p_namespace text, p_blob_id text)
RETURNS boolean LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    v_row bigint;
    v_oid oid;
BEGIN
    PERFORM pgblobs.lock_users(ARRAY[p_user]);
    SELECT id, lo_oid INTO v_row, v_oid FROM pgblobs.blobs
    WHERE blob_id = p_blob_id AND namespace = p_namespace
      AND user_id = p_user AND deleted_at IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE pgblobs.blobs SET deleted_at = now(), lo_oid = NULL WHERE id = v_row;
    DELETE FROM pgblobs.blob_flags WHERE blob_row = v_row;
    DELETE FROM pgblobs.claims WHERE blob_row = v_row;  -- a delete ends a lease
    PERFORM lo_unlink(v_oid);
    RETURN true;
END
$$;

CREATE FUNCTION pgblobs.set_flags(
    p_user text, p_namespace text, p_blob_id text, p_flags text[])
RETURNS boolean LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    v_row  bigint;
    v_date timestamptz;
BEGIN
    PERFORM pgblobs.lock_users(ARRAY[p_user]);
    SELECT id, created_at INTO v_row, v_date FROM pgblobs.blobs
    WHERE blob_id = p_blob_id AND namespace = p_namespace
      AND user_id = p_user AND deleted_at IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM pgblobs.blob_flags WHERE blob_row = v_row AND flag <> ALL (p_flags);
    IF NOT 'PROCESSING' = ANY (p_flags) THEN
        DELETE FROM pgblobs.claims WHERE blob_row = v_row;  -- PROCESSED, FAILED end a lease
    END IF;
    INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id, created_at,
                                    flag)
    SELECT v_row, p_user, p_namespace, p_blob_id, v_date, new_flag
    FROM unnest(p_flags) AS new_flag
    ON CONFLICT DO NOTHING;
    RETURN true;
END
$$;


-- Claiming pending blobs -------------------------------------------------------------------
-- POST /claim/{user}: a client reserves PENDING blobs (PROCESSING, under a lease) before it
-- hands them out. Custom plans, as the write functions.

-- Move up to p_limit of a user's PENDING blobs in a namespace to PROCESSING, oldest first,
-- each leased for p_lease_seconds; their ids, oldest first. The user's lock comes first, in
-- a statement of its own, so the claim below reads (with a snapshot taken after it) every
-- claim committed before: two claims never take one blob. SKIP LOCKED passes over flags
-- another writer is changing now.
CREATE FUNCTION pgblobs.claim_blobs(
    p_user text, p_namespace text, p_limit int, p_lease_seconds int)
RETURNS text[] LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    v_claimed text[];
BEGIN
    PERFORM pgblobs.lock_users(ARRAY[p_user]);
    WITH chosen AS (
        SELECT f.blob_row, f.blob_id, f.created_at FROM pgblobs.blob_flags AS f
        WHERE f.user_id = p_user AND f.namespace = p_namespace AND f.flag = 'PENDING'
        ORDER BY f.created_at, f.blob_row
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), unpending AS (
        DELETE FROM pgblobs.blob_flags AS f USING chosen
        WHERE f.blob_row = chosen.blob_row AND f.flag = 'PENDING'
    ), processing AS (
        INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id, created_at,
                                        flag)
        SELECT blob_row, p_user, p_namespace, blob_id, created_at, 'PROCESSING' FROM chosen
        ON CONFLICT DO NOTHING
    ), leased AS (
        -- A row left by an earlier lease (its blob made PENDING again by hand) is renewed.
        INSERT INTO pgblobs.claims (blob_row, user_id, lease_until)
        SELECT blob_row, p_user, now() + make_interval(secs => p_lease_seconds) FROM chosen
        ON CONFLICT (blob_row) DO UPDATE SET lease_until = EXCLUDED.lease_until
    )
    SELECT coalesce(array_agg(blob_id ORDER BY created_at, blob_row), '{}') INTO v_claimed
    FROM chosen;
    RETURN v_claimed;
END
$$;

-- End up to p_batch leases whose time is up, oldest first: a live blob still carrying
-- PROCESSING goes back to PENDING (how many did is the answer); the other leases are
-- simply dropped (a flag set since, or a delete, ended them). Several nodes run it at
-- once: the users' locks come first (name order, as every writer takes them), then the
-- leases are read again under them, passing over those another node is ending.
CREATE FUNCTION pgblobs.expire_claims(p_batch int)
RETURNS int LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    v_users text[];
    v_back  int;
BEGIN
    SELECT coalesce(array_agg(DISTINCT user_id), '{}') INTO v_users
    FROM (SELECT user_id FROM pgblobs.claims WHERE lease_until <= now()
          ORDER BY lease_until LIMIT p_batch) AS due;
    PERFORM pgblobs.lock_users(v_users);
    WITH due AS (
        SELECT c.blob_row, b.deleted_at IS NULL AS live
        FROM pgblobs.claims AS c JOIN pgblobs.blobs AS b ON b.id = c.blob_row
        WHERE c.user_id = ANY (v_users) AND c.lease_until <= now()
        ORDER BY c.lease_until
        LIMIT p_batch
        FOR UPDATE OF c SKIP LOCKED
    ), ended AS (
        DELETE FROM pgblobs.claims AS c USING due WHERE c.blob_row = due.blob_row
    ), lapsed AS (
        -- A tombstone's flags go too: a delete of the previous release (it takes no user's
        -- lock, so its snapshot may predate the claim) cannot see the PROCESSING added.
        DELETE FROM pgblobs.blob_flags AS f USING due
        WHERE f.blob_row = due.blob_row AND (f.flag = 'PROCESSING' OR NOT due.live)
        RETURNING f.blob_row, f.user_id, f.namespace, f.blob_id, f.created_at, f.flag,
                  due.live
    ), pending AS (
        INSERT INTO pgblobs.blob_flags (blob_row, user_id, namespace, blob_id, created_at,
                                        flag)
        SELECT blob_row, user_id, namespace, blob_id, created_at, 'PENDING' FROM lapsed
        WHERE live AND flag = 'PROCESSING'
        ON CONFLICT DO NOTHING
    )
    SELECT count(*) INTO v_back FROM lapsed WHERE live AND flag = 'PROCESSING';
    RETURN v_back;
END
$$;

-- Resumable uploads (revision 0015) -------------------------------------------------------
-- /uploads/{user}/ (tus 1.0): pgblobs/uploads.py. A PATCH holds its upload's advisory lock
-- (session level, on a content connection) from before it reads the row until it ends, and
-- commits its bytes in steps (db/upload_steps.py). Custom plans, as the write functions.

-- The key of an upload's advisory lock.
CREATE FUNCTION pgblobs.upload_lock_key(p_upload_id text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT hashtextextended('pgblobs.upload:' || p_upload_id, 0)
$$;

-- Begin an upload of p_length bytes as the blob (p_user, p_namespace, p_blob_id), expiring
-- p_expiry_seconds from now unless a PATCH comes first; when it expires. Under the user's
-- lock: the name must be free (a live blob: the live key; an upload: PB409), the user may
-- have fewer than p_max_uploads in progress (PB429), and the length must fit (PB507). An
-- upload of no bytes is its blob at once.
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
$$;

-- An upload whose last byte this transaction wrote becomes its blob, with its large object,
-- as if it had been PUT: in listings, usage and the change feed from this commit on; it is
-- remembered as finished until its expiry.
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
$$;

-- Remove the uploads p_upload_ids and their large objects (termination, expiry, fsck
-- --repair, account deletion); which went.
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
$$;


-- Triggers ---------------------------------------------------------------------------------

-- Keeps pgblobs.usage right on every path that changes blob rows (the API, import-fs, fsck
-- --repair, an operator's own SQL): one update per (user, namespace) and statement, from
-- the statement's transition tables, in key order so that two statements cannot deadlock.
-- plpgsql plans a statement only when it first runs it, so each branch may name only the
-- transition tables its own event has.
CREATE FUNCTION pgblobs.track_usage() RETURNS trigger
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO pgblobs.usage AS u (user_id, namespace, live_blobs, live_bytes)
        SELECT user_id, namespace, sum(blobs), sum(bytes) FROM (SELECT user_id, namespace, 1 AS blobs, size AS bytes FROM new_rows WHERE deleted_at IS NULL) AS delta
        GROUP BY user_id, namespace
        HAVING sum(blobs) <> 0 OR sum(bytes) <> 0
        ORDER BY user_id, namespace
        ON CONFLICT (user_id, namespace) DO UPDATE
        SET live_blobs = u.live_blobs + EXCLUDED.live_blobs,
            live_bytes = u.live_bytes + EXCLUDED.live_bytes;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO pgblobs.usage AS u (user_id, namespace, live_blobs, live_bytes)
        SELECT user_id, namespace, sum(blobs), sum(bytes) FROM (SELECT user_id, namespace, -1 AS blobs, -size AS bytes FROM old_rows WHERE deleted_at IS NULL) AS delta
        GROUP BY user_id, namespace
        HAVING sum(blobs) <> 0 OR sum(bytes) <> 0
        ORDER BY user_id, namespace
        ON CONFLICT (user_id, namespace) DO UPDATE
        SET live_blobs = u.live_blobs + EXCLUDED.live_blobs,
            live_bytes = u.live_bytes + EXCLUDED.live_bytes;
    ELSE
        INSERT INTO pgblobs.usage AS u (user_id, namespace, live_blobs, live_bytes)
        SELECT user_id, namespace, sum(blobs), sum(bytes) FROM (SELECT user_id, namespace, 1 AS blobs, size AS bytes FROM new_rows WHERE deleted_at IS NULL UNION ALL SELECT user_id, namespace, -1 AS blobs, -size AS bytes FROM old_rows WHERE deleted_at IS NULL) AS delta
        GROUP BY user_id, namespace
        HAVING sum(blobs) <> 0 OR sum(bytes) <> 0
        ORDER BY user_id, namespace
        ON CONFLICT (user_id, namespace) DO UPDATE
        SET live_blobs = u.live_blobs + EXCLUDED.live_blobs,
            live_bytes = u.live_bytes + EXCLUDED.live_bytes;
    END IF;
    RETURN NULL;
END
$$;

-- A trigger with transition tables takes one event each.
CREATE TRIGGER blobs_track_usage_insert
    AFTER INSERT ON pgblobs.blobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.track_usage();
CREATE TRIGGER blobs_track_usage_delete
    AFTER DELETE ON pgblobs.blobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.track_usage();
CREATE TRIGGER blobs_track_usage_update
    AFTER UPDATE ON pgblobs.blobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.track_usage();

-- The change feed's numbers (revision 0014): every row written gets the next number under its
-- user's lock, taken first and held until commit, so a user's changes are numbered in the order
-- they commit and a reader that has seen a number has seen every lower one of that user. The
-- NOTIFY wakes held feed requests on every node.
CREATE FUNCTION pgblobs.number_change() RETURNS trigger
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.last_change IS NULL AND NEW.last_change IS NOT NULL THEN
        -- The upgrade to revision 0014 numbering the rows before it: nobody reads the feed
        -- yet, and a user's lock taken here, after the row's, could deadlock with a writer.
        NEW.stored_change := NEW.last_change;
        RETURN NEW;
    END IF;
    -- The user's lock first, held until commit: numbers then follow commit order.
    PERFORM pg_advisory_xact_lock(pgblobs.user_lock_key(NEW.user_id));
    NEW.last_change := nextval('pgblobs.change_numbers');
    IF TG_OP = 'INSERT' OR OLD.stored_change IS NULL THEN
        NEW.stored_change := NEW.last_change;
    END IF;
    -- A statement may date its change (the upgrade's numbering does); else now.
    IF TG_OP = 'INSERT' OR NEW.changed_at IS NOT DISTINCT FROM OLD.changed_at THEN
        NEW.changed_at := now();
    END IF;
    PERFORM pg_notify('pgblobs_changes', NEW.user_id);
    RETURN NEW;
END
$$;

CREATE TRIGGER blobs_number_change
    BEFORE INSERT OR UPDATE ON pgblobs.blobs
    FOR EACH ROW EXECUTE FUNCTION pgblobs.number_change();

-- A statement that changes flags renumbers their live blobs, but those this transaction
-- numbered already (their flags are read with them).
CREATE FUNCTION pgblobs.number_flag_change() RETURNS trigger
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    -- Probes of the key alone: a join, or a test of deleted_at (the partial indexes), might
    -- read the user's live blobs; only live blobs have flags. A row this transaction wrote
    -- (xmin is its id) has a number from it already.
    UPDATE pgblobs.blobs AS b SET changed_at = now()
    WHERE b.id = ANY (ARRAY(SELECT DISTINCT f.blob_row FROM changed_flags AS f))
      AND b.xmin::text <> (txid_current() % 4294967296)::text;
    RETURN NULL;
END
$$;

CREATE TRIGGER blob_flags_number_change_insert
    AFTER INSERT ON pgblobs.blob_flags REFERENCING NEW TABLE AS changed_flags
    FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.number_flag_change();
CREATE TRIGGER blob_flags_number_change_delete
    AFTER DELETE ON pgblobs.blob_flags REFERENCING OLD TABLE AS changed_flags
    FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.number_flag_change();

-- Every token change is sent on the channel pgblobs_tokens as 'user:NAME' or 'service:NAME',
-- so nodes may cache valid tokens and forget them the moment one is revoked.
CREATE FUNCTION pgblobs.announce_token_change() RETURNS trigger
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- TG_ARGV: the kind of holder, and the column that names it.
    PERFORM pg_notify('pgblobs_tokens', TG_ARGV[0] || ':' ||
        (to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END) ->> TG_ARGV[1]));
    RETURN NULL;
END
$$;

CREATE TRIGGER tokens_announce AFTER INSERT OR UPDATE OR DELETE
    ON pgblobs.tokens FOR EACH ROW
    EXECUTE FUNCTION pgblobs.announce_token_change('user', 'user_id');
CREATE TRIGGER service_tokens_announce AFTER INSERT OR UPDATE OR DELETE
    ON pgblobs.service_tokens FOR EACH ROW
    EXECUTE FUNCTION pgblobs.announce_token_change('service', 'service');

-- A statement adding blob rows or tokens of a closed account fails (PB410), whichever path
-- it comes by; checked after the rows are in, from the statement's transition table, with a
-- custom plan (as the write functions) so that it probes the key however the table grew.
CREATE FUNCTION pgblobs.refuse_closed_accounts() RETURNS trigger
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    v_user text;
BEGIN
    -- One probe of the key per user the statement wrote.
    SELECT c.user_id INTO v_user FROM pgblobs.closed_accounts AS c
    WHERE c.user_id = ANY (ARRAY(SELECT DISTINCT n.user_id FROM new_rows AS n))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the account of user % is closed (pgblobs user delete)', v_user
            USING ERRCODE = 'PB410';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER blobs_refuse_closed_accounts
    AFTER INSERT ON pgblobs.blobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.refuse_closed_accounts();
CREATE TRIGGER tokens_refuse_closed_accounts
    AFTER INSERT ON pgblobs.tokens REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.refuse_closed_accounts();
CREATE TRIGGER uploads_refuse_closed_accounts
    AFTER INSERT ON pgblobs.uploads REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.refuse_closed_accounts();

-- A statement making a live blob of a name that an upload in progress has reserved fails
-- (PB409), whichever path it comes by (revision 0015).
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
$$;

CREATE TRIGGER blobs_refuse_reserved_names
    AFTER INSERT ON pgblobs.blobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.refuse_reserved_names();


-- Reporting --------------------------------------------------------------------------------
-- Views for operators and dashboards, readable by the pgblobs_reporting role and nothing
-- else of the schema.

CREATE VIEW pgblobs.usage_by_user AS
SELECT b.user_id,
       count(*) FILTER (WHERE b.deleted_at IS NULL)                 AS live_blobs,
       coalesce(sum(b.size) FILTER (WHERE b.deleted_at IS NULL), 0)::bigint
                                                                    AS live_bytes,
       (coalesce(sum(b.size) FILTER (WHERE b.deleted_at IS NULL), 0)::bigint + 1023)
           / 1024                                                   AS live_kib,
       count(*) FILTER (WHERE b.deleted_at IS NOT NULL)             AS tombstones,
       min(b.created_at)                                            AS first_write,
       max(b.created_at)                                            AS last_write,
       q.quota_bytes                                                AS quota_override_bytes,
       q.user_id IS NOT NULL                                        AS has_quota_override
FROM pgblobs.blobs AS b
LEFT JOIN pgblobs.quotas AS q ON q.user_id = b.user_id
GROUP BY b.user_id, q.user_id, q.quota_bytes;
COMMENT ON VIEW pgblobs.usage_by_user IS
    'Per user: live blobs and bytes (live_kib as get_total_storage counts), '
    'tombstones, first and last write, quota override if any';

CREATE VIEW pgblobs.usage_by_namespace AS
SELECT user_id, namespace,
       count(*) FILTER (WHERE deleted_at IS NULL)                       AS live_blobs,
       coalesce(sum(size) FILTER (WHERE deleted_at IS NULL), 0)::bigint AS live_bytes,
       count(*) FILTER (WHERE deleted_at IS NOT NULL)                   AS tombstones,
       min(created_at)                                                  AS first_write,
       max(created_at)                                                  AS last_write
FROM pgblobs.blobs
GROUP BY user_id, namespace;

CREATE VIEW pgblobs.daily_activity AS
SELECT day::date AS day,
       sum(written)::bigint       AS blobs_written,
       sum(written_bytes)::bigint AS bytes_written,
       sum(deleted)::bigint       AS blobs_deleted,
       sum(deleted_bytes)::bigint AS bytes_deleted
FROM (
    SELECT date_trunc('day', created_at) AS day, 1 AS written, size AS written_bytes,
           0 AS deleted, 0 AS deleted_bytes
    FROM pgblobs.blobs
    UNION ALL
    SELECT date_trunc('day', deleted_at), 0, 0, 1, size
    FROM pgblobs.blobs WHERE deleted_at IS NOT NULL
) AS events
GROUP BY day;

GRANT USAGE ON SCHEMA pgblobs TO pgblobs_reporting;
GRANT SELECT ON pgblobs.usage_by_user, pgblobs.usage_by_namespace, pgblobs.daily_activity
    TO pgblobs_reporting;
