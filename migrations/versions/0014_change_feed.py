"""The change feed: every change to a blob row gets a number, in the order the
user's changes commit, so a client can ask for what changed after a number.

- ``pgblobs.change_numbers`` hands out the numbers. ``pgblobs.blobs`` gains
  ``last_change`` (the number of the row's latest change), ``stored_change``
  (the number it was stored with: a client whose cursor is older has not seen
  the blob, one whose cursor is newer has and hears of a flags change) and
  ``changed_at``. The feed keeps each blob's latest state, not every step:
  a client sees a blob once per read with what it is now, which is all a
  sync needs, and the feed costs no table that grows with every write.
- ``pgblobs.number_change`` (BEFORE INSERT OR UPDATE, per row) numbers a row
  under its user's lock, taken first and held until commit: a user's changes
  then get their numbers in the order they commit, so a reader that has seen
  a number has seen every number of that user below it (no change skipped,
  whichever node or writer made it). Every writer of new rows holds the lock
  already (insert_blob_rows), so the trigger re-enters it; it also sends
  NOTIFY pgblobs_changes with the user, which wakes held feed requests on
  every node.
- ``pgblobs.number_flag_change`` (AFTER INSERT, AFTER DELETE on
  ``pgblobs.blob_flags``, per statement) renumbers the live blobs whose flags
  a statement changed, unless this transaction numbered them already (their
  flags are read with them).
- ``pgblobs.delete_blob`` and ``pgblobs.set_flags`` take the user's lock
  before the row's (the trigger would take it after): a writer holding the
  lock that waits for the row would otherwise deadlock with them.
- ``pgblobs.change_horizons``: per user, the newest change number that
  ``pgblobs purge`` removed with its tombstone; a cursor below it has missed
  a delete, and is answered 410.

Online: the columns are added without a rewrite, rows that exist are numbered
in batches (each its own transaction), NOT NULL comes
from a validated CHECK (no scan under an exclusive lock), and the index is
built CONCURRENTLY. Nodes of the previous release keep serving: their inserts
hold the user's lock already, and their deletes and flag changes are
numbered by the triggers. Those take the row's lock before the user's (the
trigger's): one racing a new node's write of the same blob can deadlock,
which PostgreSQL breaks within deadlock_timeout by failing one of the two;
so roll the nodes soon after the upgrade.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

BACKFILL_BATCH = 5000


def upgrade():
    op.execute("CREATE SEQUENCE pgblobs.change_numbers AS bigint")
    op.execute("""
        ALTER TABLE pgblobs.blobs
            ADD COLUMN stored_change bigint,
            ADD COLUMN last_change   bigint,
            ADD COLUMN changed_at    timestamptz
    """)
    op.execute("""
        CREATE TABLE pgblobs.change_horizons (
            user_id        text   PRIMARY KEY,
            purged_through bigint NOT NULL
        )
    """)
    op.execute("""
        COMMENT ON TABLE pgblobs.change_horizons IS
            'Per user, the newest change number pgblobs purge removed with a tombstone: '
            'a feed cursor below it has missed a delete'
    """)
    op.execute("""
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
        $$
    """)
    op.execute("""
        CREATE TRIGGER blobs_number_change
            BEFORE INSERT OR UPDATE ON pgblobs.blobs
            FOR EACH ROW EXECUTE FUNCTION pgblobs.number_change()
    """)
    op.execute("""
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
        $$
    """)
    for event in ("INSERT", "DELETE"):
        table = "NEW" if event == "INSERT" else "OLD"
        op.execute(f"""
            CREATE TRIGGER blob_flags_number_change_{event.lower()}
                AFTER {event} ON pgblobs.blob_flags REFERENCING {table} TABLE AS changed_flags
                FOR EACH STATEMENT EXECUTE FUNCTION pgblobs.number_flag_change()
        """)
    op.execute("""
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
        $$
    """)
    op.execute("""
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
        $$
    """)
    with op.get_context().autocommit_block():
        _number_existing_rows()
        op.execute("""
            ALTER TABLE pgblobs.blobs ADD CONSTRAINT blobs_numbered CHECK (
                stored_change IS NOT NULL AND last_change IS NOT NULL AND changed_at IS NOT NULL
            ) NOT VALID
        """)
        op.execute("ALTER TABLE pgblobs.blobs VALIDATE CONSTRAINT blobs_numbered")
        # The validated CHECK spares SET NOT NULL its scan under an exclusive lock.
        op.execute("""
            ALTER TABLE pgblobs.blobs
                ALTER COLUMN stored_change SET NOT NULL,
                ALTER COLUMN last_change SET NOT NULL,
                ALTER COLUMN changed_at SET NOT NULL
        """)
        op.execute("ALTER TABLE pgblobs.blobs DROP CONSTRAINT blobs_numbered")
        op.execute(
            "CREATE INDEX CONCURRENTLY blobs_changes ON pgblobs.blobs (user_id, last_change)"
        )


def _number_existing_rows():
    """Number the rows written before this revision, a batch per transaction,
    dated as they were written (or deleted). No user's lock: nobody reads the
    feed before the upgrade ends, and pgblobs.number_change takes none for
    these rows (a lock taken after the rows' would deadlock with a delete of
    the previous release, which locks the row before the user)."""
    op.execute(f"""
        DO $$
        DECLARE
            v_last bigint := 0;
        BEGIN
            LOOP
                SELECT max(id) INTO v_last
                FROM (SELECT id FROM pgblobs.blobs
                      WHERE id > v_last AND last_change IS NULL
                      ORDER BY id LIMIT {BACKFILL_BATCH}) AS batch;
                EXIT WHEN v_last IS NULL;
                UPDATE pgblobs.blobs
                SET last_change = nextval('pgblobs.change_numbers'),
                    changed_at = coalesce(deleted_at, created_at)
                WHERE id <= v_last AND last_change IS NULL;
                COMMIT;
            END LOOP;
        END
        $$
    """)


def downgrade():
    op.execute("DROP FUNCTION pgblobs.set_flags(text, text, text, text[])")
    op.execute("DROP FUNCTION pgblobs.delete_blob(text, text, text)")
    for event in ("insert", "delete"):
        op.execute(f"DROP TRIGGER blob_flags_number_change_{event} ON pgblobs.blob_flags")
    op.execute("DROP FUNCTION pgblobs.number_flag_change()")
    op.execute("DROP TRIGGER blobs_number_change ON pgblobs.blobs")
    op.execute("DROP FUNCTION pgblobs.number_change()")
    op.execute("DROP TABLE pgblobs.change_horizons")
    op.execute("DROP INDEX pgblobs.blobs_changes")
    op.execute("""
        ALTER TABLE pgblobs.blobs
            DROP COLUMN stored_change, DROP COLUMN last_change, DROP COLUMN changed_at
    """)
    op.execute("DROP SEQUENCE pgblobs.change_numbers")
