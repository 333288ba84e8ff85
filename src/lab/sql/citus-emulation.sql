-- =====================================================================================
-- EMULATION of Citus's node-metadata API for trying and testing citus-controller; not Citus.
-- =====================================================================================
--
-- Loaded by src/lab/citus.ts (ensureCitus) into each database of a fresh PRIMARY when real
-- Citus is not available (no `citus` in pg_available_extensions). Run it ONCE per database,
-- inside ONE transaction, as a superuser. It creates, in schema pg_catalog and under Citus's
-- names, what citus-controller touches:
--
--   type      noderole ('primary' | 'secondary' | 'unavailable')
--   sequences pg_dist_node_nodeid_seq, pg_dist_groupid_seq
--   tables    pg_dist_node (Citus 13.0 columns, in Citus's order), pg_dist_local_group
--   trigger   pg_dist_node_trigger: at most one primary per group
--   functions citus_add_node / master_add_node, citus_add_inactive_node,
--             citus_add_secondary_node, citus_remove_node, citus_update_node /
--             master_update_node, citus_set_coordinator_host, citus_is_coordinator,
--             citus_get_active_worker_nodes
--
-- Signatures, argument names, defaults, STRICTness, return types, error texts and SQLSTATEs
-- follow the Citus sources (src/backend/distributed/metadata/node_metadata.c and
-- sql/udfs/*/latest.sql). Errors that Citus raises with a bare ereport(ERROR, errmsg(..))
-- carry SQLSTATE XX000 here as there.
--
-- What is deliberately NOT emulated (there is no Citus underneath):
--   * no shards, placements, distributed queries, connections to other nodes, maintenance
--     daemon or metadata sync. A worker primary added with citus_add_node gets
--     hasmetadata = true, metadatasynced = true at once, as Citus 13 leaves it after a
--     successful activation; secondaries keep hasmetadata = false, metadatasynced = false.
--     citus_update_node sets metadatasynced = false on every metadata worker row (hasmetadata
--     and metadatasynced, groupid > 0), as Citus does (UnsetMetadataSyncedForAllWorkers in
--     node_metadata.c). Citus's maintenance daemon then syncs them and sets it back to true,
--     seconds later; the emulation has no daemon, so it stays false, as it does on real Citus
--     while those workers cannot be reached. Callers must not rely on either value.
--   * force / lock_cooldown of citus_update_node are accepted and ignored (no shard locks
--     to wait for).
--   * citus.use_secondary_nodes is not created: on PostgreSQL 15 it is a placeholder GUC,
--     and ALTER SYSTEM SET on a placeholder only works when the session already knows it,
--     i.e. when postgresql.conf names it (the lab sets `citus.use_secondary_nodes = never`).
--     A placeholder is an ordinary user-settable GUC: SET works, and a reload changes it in
--     existing sessions too; real Citus (PGC_SU_BACKEND) rejects SET and only new sessions
--     see a reloaded value.
-- =====================================================================================

SET LOCAL allow_system_table_mods = on;
SET LOCAL search_path = pg_catalog;

DO $emulation$
BEGIN
  IF to_regtype('pg_catalog.noderole') IS NULL THEN
    CREATE TYPE pg_catalog.noderole AS ENUM ('primary', 'secondary', 'unavailable');
  END IF;
END
$emulation$;
COMMENT ON TYPE pg_catalog.noderole IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. Role of a pg_dist_node row.';

CREATE SEQUENCE IF NOT EXISTS pg_catalog.pg_dist_groupid_seq MINVALUE 1 MAXVALUE 4294967296;
CREATE SEQUENCE IF NOT EXISTS pg_catalog.pg_dist_node_nodeid_seq MINVALUE 1 MAXVALUE 4294967296;

-- Column order and types are Citus 13.0's. The functions below always set every column; the
-- column defaults only matter for hand-written INSERTs (Citus's own DDL historically draws
-- nodeid's default from pg_dist_groupid_seq and vice versa; nothing should INSERT by hand).
CREATE TABLE IF NOT EXISTS pg_catalog.pg_dist_node (
  nodeid int NOT NULL DEFAULT nextval('pg_catalog.pg_dist_node_nodeid_seq') PRIMARY KEY,
  groupid int NOT NULL DEFAULT nextval('pg_catalog.pg_dist_groupid_seq'),
  nodename text NOT NULL,
  nodeport int NOT NULL DEFAULT 5432,
  noderack text NOT NULL DEFAULT 'default',
  hasmetadata bool NOT NULL DEFAULT false,
  isactive bool NOT NULL DEFAULT true,
  noderole pg_catalog.noderole NOT NULL DEFAULT 'primary',
  nodecluster name NOT NULL DEFAULT 'default',
  metadatasynced bool NOT NULL DEFAULT false,
  shouldhaveshards bool NOT NULL DEFAULT true,
  UNIQUE (nodename, nodeport)
);
GRANT SELECT ON pg_catalog.pg_dist_node TO public;
COMMENT ON TABLE pg_catalog.pg_dist_node IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. The nodes of the cluster, Citus 13.0 columns.';

CREATE TABLE IF NOT EXISTS pg_catalog.pg_dist_local_group (
  groupid int NOT NULL PRIMARY KEY
);
INSERT INTO pg_catalog.pg_dist_local_group (groupid)
  SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_local_group);
GRANT SELECT ON pg_catalog.pg_dist_local_group TO public;
COMMENT ON TABLE pg_catalog.pg_dist_local_group IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. Group id of this node: 0 = coordinator.';

-- One primary per group, enforced by a trigger as in Citus (same lock, same message).
CREATE OR REPLACE FUNCTION pg_catalog.pg_dist_node_trigger_func()
RETURNS trigger
LANGUAGE plpgsql
AS $func$
BEGIN
  LOCK TABLE pg_catalog.pg_dist_node IN SHARE ROW EXCLUSIVE MODE;
  IF NEW.noderole = 'primary'
     AND EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node n
                  WHERE n.groupid = NEW.groupid AND n.noderole = 'primary' AND n.nodeid <> NEW.nodeid)
  THEN
    RAISE EXCEPTION 'there cannot be two primary nodes in a group';
  END IF;
  RETURN NEW;
END
$func$;
COMMENT ON FUNCTION pg_catalog.pg_dist_node_trigger_func() IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. Rejects a second primary row in a group.';

DROP TRIGGER IF EXISTS pg_dist_node_trigger ON pg_catalog.pg_dist_node;
CREATE TRIGGER pg_dist_node_trigger
  BEFORE INSERT OR UPDATE ON pg_catalog.pg_dist_node
  FOR EACH ROW EXECUTE FUNCTION pg_catalog.pg_dist_node_trigger_func();

-- ----------------------------------------------------------------------------------------
-- Internal helpers (not part of Citus's API).
-- ----------------------------------------------------------------------------------------

-- Citus's EnsureCoordinator(): node-changing functions run on the coordinator only.
CREATE OR REPLACE FUNCTION pg_catalog.citus_emulation_ensure_coordinator()
RETURNS void
LANGUAGE plpgsql
AS $func$
BEGIN
  IF (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g LIMIT 1) IS DISTINCT FROM 0 THEN
    RAISE EXCEPTION 'operation is not allowed on this node'
      USING ERRCODE = 'XX000', HINT = 'Connect to the coordinator and run it again.';
  END IF;
END
$func$;
COMMENT ON FUNCTION pg_catalog.citus_emulation_ensure_coordinator() IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. Internal: Citus''s EnsureCoordinator().';

-- Citus's AddNodeMetadata(): returns the id of the (existing or new) row and whether it
-- already existed.
CREATE OR REPLACE FUNCTION pg_catalog.citus_emulation_add_node_metadata(
  p_nodename text, p_nodeport int, p_groupid int, p_noderole pg_catalog.noderole,
  p_nodecluster name, p_isactive bool, p_shouldhaveshards bool,
  OUT nodeid int, OUT already_exists bool)
LANGUAGE plpgsql
AS $func$
DECLARE
  v_groupid int := p_groupid;
  v_hasmetadata bool := false;
  v_metadatasynced bool := false;
  v_isactive bool := p_isactive;
  v_coordinator_name text;
BEGIN
  PERFORM pg_catalog.citus_emulation_ensure_coordinator();

  SELECT n.nodeid INTO nodeid FROM pg_catalog.pg_dist_node n
   WHERE n.nodename = p_nodename AND n.nodeport = p_nodeport;
  IF FOUND THEN
    already_exists := true;
    RETURN;
  END IF;

  LOCK TABLE pg_catalog.pg_dist_node IN EXCLUSIVE MODE;
  SELECT n.nodeid INTO nodeid FROM pg_catalog.pg_dist_node n
   WHERE n.nodename = p_nodename AND n.nodeport = p_nodeport;
  IF FOUND THEN
    already_exists := true;
    RETURN;
  END IF;
  already_exists := false;

  IF v_groupid <> 0 AND p_nodename <> 'localhost' THEN
    SELECT n.nodename INTO v_coordinator_name FROM pg_catalog.pg_dist_node n
     WHERE n.groupid = 0 AND n.noderole = 'primary';
    IF v_coordinator_name = 'localhost' THEN
      RAISE EXCEPTION 'cannot add a worker node when the coordinator hostname is set to localhost'
        USING ERRCODE = 'XX000',
              DETAIL = 'Worker nodes need to be able to connect to the coordinator to transfer data.',
              HINT = 'Use SELECT citus_set_coordinator_host(''<hostname>'') to configure the coordinator hostname';
    END IF;
  END IF;

  IF v_groupid = -1 THEN
    v_groupid := nextval('pg_catalog.pg_dist_groupid_seq');
  END IF;

  IF v_groupid = 0 THEN
    -- the coordinator always has the authoritative metadata and is never inactive
    v_hasmetadata := true;
    v_metadatasynced := true;
    v_isactive := true;
  END IF;

  IF p_noderole = 'primary' THEN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node n
                WHERE n.groupid = v_groupid AND n.noderole = 'primary') THEN
      RAISE EXCEPTION 'group % already has a primary node', v_groupid USING ERRCODE = 'XX000';
    END IF;
    IF p_nodecluster <> 'default' THEN
      RAISE EXCEPTION 'primaries must be added to the default cluster' USING ERRCODE = 'XX000';
    END IF;
  END IF;

  nodeid := nextval('pg_catalog.pg_dist_node_nodeid_seq');
  INSERT INTO pg_catalog.pg_dist_node
    (nodeid, groupid, nodename, nodeport, noderack, hasmetadata, isactive, noderole,
     nodecluster, metadatasynced, shouldhaveshards)
  VALUES
    (nodeid, v_groupid, p_nodename, p_nodeport, 'default', v_hasmetadata, v_isactive, p_noderole,
     p_nodecluster, v_metadatasynced, p_shouldhaveshards);
END
$func$;
COMMENT ON FUNCTION pg_catalog.citus_emulation_add_node_metadata(text, int, int, pg_catalog.noderole, name, bool, bool) IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. Internal: Citus''s AddNodeMetadata().';
REVOKE ALL ON FUNCTION pg_catalog.citus_emulation_add_node_metadata(text, int, int, pg_catalog.noderole, name, bool, bool) FROM PUBLIC;

-- Which rows are "readable" (Citus's NodeIsReadable) in the current cluster.
CREATE OR REPLACE FUNCTION pg_catalog.citus_emulation_readable_role()
RETURNS pg_catalog.noderole
LANGUAGE sql
STABLE
AS $func$
  SELECT CASE WHEN current_setting('citus.use_secondary_nodes', true) = 'always'
              THEN 'secondary'::pg_catalog.noderole ELSE 'primary'::pg_catalog.noderole END
$func$;
COMMENT ON FUNCTION pg_catalog.citus_emulation_readable_role() IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. Internal: the role citus.use_secondary_nodes makes readable.';

-- ----------------------------------------------------------------------------------------
-- Citus's API
-- ----------------------------------------------------------------------------------------

-- citus_add_node: add (and "activate") a node; an existing node returns its id untouched.
-- Real Citus connects to a new primary worker to sync metadata; the emulation does not and
-- marks it hasmetadata/metadatasynced at once.
CREATE OR REPLACE FUNCTION pg_catalog.citus_add_node(
  nodename text, nodeport integer, groupid integer DEFAULT -1,
  noderole pg_catalog.noderole DEFAULT 'primary', nodecluster name DEFAULT 'default')
RETURNS integer
LANGUAGE plpgsql
STRICT
AS $func$
DECLARE
  v_id int;
  v_exists bool;
  v_row pg_catalog.pg_dist_node;
BEGIN
  SELECT m.nodeid, m.already_exists INTO v_id, v_exists
    FROM pg_catalog.citus_emulation_add_node_metadata(
      citus_add_node.nodename, citus_add_node.nodeport, citus_add_node.groupid,
      citus_add_node.noderole, citus_add_node.nodecluster,
      false, citus_add_node.groupid <> 0) m;
  IF v_exists THEN
    RETURN v_id;
  END IF;

  -- ActivateNode(): mark active; a primary worker gets its metadata synced.
  UPDATE pg_catalog.pg_dist_node n SET isactive = true WHERE n.nodeid = v_id
    RETURNING * INTO v_row;
  IF v_row.groupid = 0 AND v_row.noderole = 'primary' THEN
    RAISE NOTICE '%:% is the coordinator and already contains metadata, skipping syncing the metadata',
      v_row.nodename, v_row.nodeport;
  ELSIF v_row.noderole = 'primary' THEN
    UPDATE pg_catalog.pg_dist_node n SET hasmetadata = true, metadatasynced = true
     WHERE n.nodeid = v_id;
  END IF;
  RETURN v_id;
END
$func$;
COMMENT ON FUNCTION pg_catalog.citus_add_node(text, integer, integer, pg_catalog.noderole, name) IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. add node to the cluster (returns its nodeid; an existing node returns its id).';
REVOKE ALL ON FUNCTION pg_catalog.citus_add_node(text, integer, integer, pg_catalog.noderole, name) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pg_catalog.master_add_node(
  nodename text, nodeport integer, groupid integer DEFAULT -1,
  noderole pg_catalog.noderole DEFAULT 'primary', nodecluster name DEFAULT 'default')
RETURNS integer
LANGUAGE sql
STRICT
AS $func$
  SELECT pg_catalog.citus_add_node($1, $2, $3, $4, $5)
$func$;
COMMENT ON FUNCTION pg_catalog.master_add_node(text, integer, integer, pg_catalog.noderole, name) IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. Old name of citus_add_node.';
REVOKE ALL ON FUNCTION pg_catalog.master_add_node(text, integer, integer, pg_catalog.noderole, name) FROM PUBLIC;

-- citus_add_inactive_node: only inserts the row (isactive = false); never connects, also in
-- real Citus.
CREATE OR REPLACE FUNCTION pg_catalog.citus_add_inactive_node(
  nodename text, nodeport integer, groupid integer DEFAULT -1,
  noderole pg_catalog.noderole DEFAULT 'primary', nodecluster name DEFAULT 'default')
RETURNS integer
LANGUAGE plpgsql
STRICT
AS $func$
DECLARE
  v_id int;
BEGIN
  IF citus_add_inactive_node.groupid = 0 THEN
    RAISE EXCEPTION 'coordinator node cannot be added as inactive node' USING ERRCODE = 'XX000';
  END IF;
  SELECT m.nodeid INTO v_id
    FROM pg_catalog.citus_emulation_add_node_metadata(
      citus_add_inactive_node.nodename, citus_add_inactive_node.nodeport,
      citus_add_inactive_node.groupid, citus_add_inactive_node.noderole,
      citus_add_inactive_node.nodecluster, false, true) m;
  RETURN v_id;
END
$func$;
COMMENT ON FUNCTION pg_catalog.citus_add_inactive_node(text, integer, integer, pg_catalog.noderole, name) IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. prepare node by adding it to pg_dist_node (inactive).';
REVOKE ALL ON FUNCTION pg_catalog.citus_add_inactive_node(text, integer, integer, pg_catalog.noderole, name) FROM PUBLIC;

-- citus_add_secondary_node: an active secondary in the group of primaryname:primaryport;
-- never connects, also in real Citus.
CREATE OR REPLACE FUNCTION pg_catalog.citus_add_secondary_node(
  nodename text, nodeport integer, primaryname text, primaryport integer,
  nodecluster name DEFAULT 'default')
RETURNS integer
LANGUAGE plpgsql
STRICT
AS $func$
DECLARE
  v_group int;
  v_id int;
BEGIN
  -- GroupForNode(): looks the primary up in the current cluster
  SELECT n.groupid INTO v_group FROM pg_catalog.pg_dist_node n
   WHERE n.nodename = citus_add_secondary_node.primaryname
     AND n.nodeport = citus_add_secondary_node.primaryport
     AND n.nodecluster = coalesce(nullif(current_setting('citus.cluster_name', true), ''), 'default');
  IF NOT FOUND THEN
    RAISE EXCEPTION 'node at "%:%" does not exist', primaryname,
      (primaryport::bigint & 4294967295) USING ERRCODE = 'XX000';
  END IF;
  SELECT m.nodeid INTO v_id
    FROM pg_catalog.citus_emulation_add_node_metadata(
      citus_add_secondary_node.nodename, citus_add_secondary_node.nodeport, v_group,
      'secondary', citus_add_secondary_node.nodecluster, true, true) m;
  RETURN v_id;
END
$func$;
COMMENT ON FUNCTION pg_catalog.citus_add_secondary_node(text, integer, text, integer, name) IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. add a secondary node to the cluster.';
REVOKE ALL ON FUNCTION pg_catalog.citus_add_secondary_node(text, integer, text, integer, name) FROM PUBLIC;

-- citus_remove_node: delete the row (the emulation has no shard placements to check).
CREATE OR REPLACE FUNCTION pg_catalog.citus_remove_node(nodename text, nodeport integer)
RETURNS void
LANGUAGE plpgsql
STRICT
AS $func$
BEGIN
  PERFORM pg_catalog.citus_emulation_ensure_coordinator();
  LOCK TABLE pg_catalog.pg_dist_node IN EXCLUSIVE MODE;
  DELETE FROM pg_catalog.pg_dist_node n
   WHERE n.nodename = citus_remove_node.nodename AND n.nodeport = citus_remove_node.nodeport;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'node at "%:%" does not exist', nodename,
      (nodeport::bigint & 4294967295) USING ERRCODE = 'XX000';
  END IF;
END
$func$;
COMMENT ON FUNCTION pg_catalog.citus_remove_node(text, integer) IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. remove node from the cluster.';
REVOKE ALL ON FUNCTION pg_catalog.citus_remove_node(text, integer) FROM PUBLIC;

-- The lock real Citus takes on a PRIMARY node's shard placements (advisory locks on each shard,
-- AccessExclusive) before it changes or pauses the node: it blocks writes to the group's shards
-- and any other session's citus_update_node / citus_pause_node_within_txn of that node, but not
-- SELECTs. A secondary row has no placements: nothing is locked for it. The emulation has no
-- shards, so it takes one transaction-level advisory lock per group (two-int4 form, first key
-- 'Citu'), which also conflicts where real Citus would lock nothing (a group without shards).
-- force: after lock_cooldown ms of waiting, the sessions holding it are terminated, as Citus
-- terminates the backends that block its placement locks.
CREATE OR REPLACE FUNCTION pg_catalog.citus_emulation_lock_placements(
  node_id integer, force boolean, lock_cooldown integer)
RETURNS void
LANGUAGE plpgsql
STRICT
AS $func$
DECLARE
  v_group int;
  v_role pg_catalog.noderole;
  v_until timestamptz;
BEGIN
  SELECT n.groupid, n.noderole INTO v_group, v_role FROM pg_catalog.pg_dist_node n WHERE n.nodeid = node_id;
  IF NOT FOUND OR v_role <> 'primary' THEN
    RETURN;
  END IF;
  IF force THEN
    v_until := clock_timestamp() + make_interval(secs => greatest(lock_cooldown, 0) / 1000.0);
    WHILE NOT pg_catalog.pg_try_advisory_xact_lock(1130984565, v_group) LOOP
      IF clock_timestamp() >= v_until THEN
        PERFORM pg_catalog.pg_terminate_backend(l.pid)
           FROM pg_catalog.pg_locks l
          WHERE l.locktype = 'advisory' AND l.classid = 1130984565 AND l.objid = v_group
            AND l.objsubid = 2 AND l.granted AND l.pid <> pg_catalog.pg_backend_pid();
        PERFORM pg_catalog.pg_advisory_xact_lock(1130984565, v_group);
        RETURN;
      END IF;
      PERFORM pg_catalog.pg_sleep(0.01);
    END LOOP;
    RETURN;
  END IF;
  PERFORM pg_catalog.pg_advisory_xact_lock(1130984565, v_group);
END
$func$;
COMMENT ON FUNCTION pg_catalog.citus_emulation_lock_placements(integer, boolean, integer) IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. The placement lock of a primary node (one advisory lock per group).';
REVOKE ALL ON FUNCTION pg_catalog.citus_emulation_lock_placements(integer, boolean, integer) FROM PUBLIC;

-- citus_pause_node_within_txn (Citus >= 12.1): takes the placement lock of the node and holds it
-- until the transaction ends. Outside a transaction block it is taken and released at once (no
-- error). STRICT, returns void; an unknown node id is P0002 "node N not found" (N unsigned). It
-- only takes locks: it also runs on a hot standby, and on the coordinator's or a secondary row.
CREATE OR REPLACE FUNCTION pg_catalog.citus_pause_node_within_txn(
  node_id integer, force boolean DEFAULT false, lock_cooldown integer DEFAULT 10000)
RETURNS void
LANGUAGE plpgsql
STRICT
AS $func$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node n WHERE n.nodeid = node_id) THEN
    RAISE EXCEPTION 'node % not found', (node_id::bigint & 4294967295) USING ERRCODE = 'P0002';
  END IF;
  PERFORM pg_catalog.citus_emulation_lock_placements(node_id, force, lock_cooldown);
END
$func$;
COMMENT ON FUNCTION pg_catalog.citus_pause_node_within_txn(integer, boolean, integer) IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. pauses the node (its placement lock) until the transaction ends.';
REVOKE ALL ON FUNCTION pg_catalog.citus_pause_node_within_txn(integer, boolean, integer) FROM PUBLIC;

-- citus_update_node: re-point a row (by nodeid) to another address. STRICT (a NULL argument
-- is a silent no-op), no coordinator check, never connects to the new address.
CREATE OR REPLACE FUNCTION pg_catalog.citus_update_node(
  node_id integer, new_node_name text, new_node_port integer,
  force boolean DEFAULT false, lock_cooldown integer DEFAULT 10000)
RETURNS void
LANGUAGE plpgsql
STRICT
AS $func$
DECLARE
  v_holder int;
BEGIN
  SELECT n.nodeid INTO v_holder FROM pg_catalog.pg_dist_node n
   WHERE n.nodename = new_node_name AND n.nodeport = new_node_port;
  IF FOUND THEN
    IF v_holder = node_id THEN
      RETURN;  -- same address as now: no-op
    END IF;
    RAISE EXCEPTION 'there is already another node with the specified hostname and port'
      USING ERRCODE = '55000';
  END IF;

  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node n WHERE n.nodeid = node_id) THEN
    RAISE EXCEPTION 'node % not found', (node_id::bigint & 4294967295) USING ERRCODE = 'P0002';
  END IF;

  -- the node's placement lock first: waits for a pause (or another update) of the node in
  -- another session; with force, terminates it after lock_cooldown ms
  PERFORM pg_catalog.citus_emulation_lock_placements(node_id, force, lock_cooldown);

  -- Real Citus writes the catalog row from C, bypassing the read-only-transaction check, and
  -- on a hot standby fails when the write needs a transaction id. A PL/pgSQL UPDATE would
  -- fail earlier with 25006 "cannot execute UPDATE in a read-only transaction", so the
  -- emulation raises Citus's error at the point where Citus writes.
  IF pg_catalog.pg_is_in_recovery() THEN
    RAISE EXCEPTION 'cannot assign TransactionIds during recovery' USING ERRCODE = 'XX000';
  END IF;

  UPDATE pg_catalog.pg_dist_node n
     SET nodename = new_node_name, nodeport = new_node_port
   WHERE n.nodeid = node_id;

  -- Citus takes this lock to mark metadata workers unsynced (serialises concurrent updates),
  -- then marks them: the maintenance daemon propagates the change and sets them synced again.
  LOCK TABLE pg_catalog.pg_dist_node IN EXCLUSIVE MODE;
  UPDATE pg_catalog.pg_dist_node n
     SET metadatasynced = false
   WHERE n.hasmetadata AND n.metadatasynced AND n.groupid > 0;
END
$func$;
COMMENT ON FUNCTION pg_catalog.citus_update_node(integer, text, integer, boolean, integer) IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. change the location of a node (takes the node''s placement lock; force terminates its holders after lock_cooldown).';
REVOKE ALL ON FUNCTION pg_catalog.citus_update_node(integer, text, integer, boolean, integer) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pg_catalog.master_update_node(
  node_id integer, new_node_name text, new_node_port integer,
  force boolean DEFAULT false, lock_cooldown integer DEFAULT 10000)
RETURNS void
LANGUAGE sql
STRICT
AS $func$
  SELECT pg_catalog.citus_update_node($1, $2, $3, $4, $5)
$func$;
COMMENT ON FUNCTION pg_catalog.master_update_node(integer, text, integer, boolean, integer) IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. Old name of citus_update_node.';
REVOKE ALL ON FUNCTION pg_catalog.master_update_node(integer, text, integer, boolean, integer) FROM PUBLIC;

-- citus_set_coordinator_host: add the coordinator row (group 0), or re-point the existing
-- coordinator primary row in place.
CREATE OR REPLACE FUNCTION pg_catalog.citus_set_coordinator_host(
  host text, port integer DEFAULT current_setting('port')::int,
  node_role pg_catalog.noderole DEFAULT 'primary', node_cluster name DEFAULT 'default')
RETURNS void
LANGUAGE plpgsql
STRICT
AS $func$
DECLARE
  v_id int;
BEGIN
  SELECT n.nodeid INTO v_id FROM pg_catalog.pg_dist_node n
   WHERE n.groupid = 0 AND n.noderole = 'primary';
  IF FOUND THEN
    UPDATE pg_catalog.pg_dist_node n SET nodename = host, nodeport = port WHERE n.nodeid = v_id;
  ELSE
    PERFORM pg_catalog.citus_emulation_add_node_metadata(host, port, 0, node_role, node_cluster, true, false);
  END IF;
END
$func$;
COMMENT ON FUNCTION pg_catalog.citus_set_coordinator_host(text, integer, pg_catalog.noderole, name) IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. set the host and port of the coordinator.';
REVOKE ALL ON FUNCTION pg_catalog.citus_set_coordinator_host(text, integer, pg_catalog.noderole, name) FROM PUBLIC;

-- citus_is_coordinator: local group 0 and at least one active readable node.
CREATE OR REPLACE FUNCTION pg_catalog.citus_is_coordinator()
RETURNS boolean
LANGUAGE sql
STRICT
AS $func$
  SELECT coalesce((SELECT g.groupid FROM pg_catalog.pg_dist_local_group g LIMIT 1) = 0, false)
     AND EXISTS (SELECT 1 FROM pg_catalog.pg_dist_node n
                  WHERE n.isactive
                    AND n.noderole = pg_catalog.citus_emulation_readable_role()
                    AND n.nodecluster = coalesce(nullif(current_setting('citus.cluster_name', true), ''), 'default'))
$func$;
COMMENT ON FUNCTION pg_catalog.citus_is_coordinator() IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. returns whether the current node is a coordinator.';

-- citus_get_active_worker_nodes: active, readable, non-coordinator nodes of the current cluster.
CREATE OR REPLACE FUNCTION pg_catalog.citus_get_active_worker_nodes(OUT node_name text, OUT node_port bigint)
RETURNS SETOF record
LANGUAGE sql
STRICT
ROWS 100
AS $func$
  SELECT n.nodename, n.nodeport::bigint
    FROM pg_catalog.pg_dist_node n
   WHERE n.isactive
     AND n.groupid <> 0
     AND n.noderole = pg_catalog.citus_emulation_readable_role()
     AND n.nodecluster = coalesce(nullif(current_setting('citus.cluster_name', true), ''), 'default')
   ORDER BY n.nodename, n.nodeport
$func$;
COMMENT ON FUNCTION pg_catalog.citus_get_active_worker_nodes() IS
  'EMULATION of Citus''s node-metadata API for trying and testing citus-controller; not Citus. fetch set of active worker nodes.';
