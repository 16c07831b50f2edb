/**
 * Schema migrations of the PostgreSQL store. Numbered, applied in order, one transaction each, under a
 * transaction-level advisory lock, recorded in `schema_migrations`. A migration is never edited after
 * it lands: a change is a new, higher number.
 *
 * Conventions (the same as SQLite's, so both stores behave alike): times are `bigint` epoch
 * milliseconds; JSON values are stored as text and parsed only when a view is built; `seq` columns are
 * insertion order (FIFO ties, cursors, "oldest first"). Tables are created unqualified, in the first
 * schema of the connection's `search_path` (the store's `schema` option).
 */

/** One schema change. */
export interface PostgresMigration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

/** Migration 4: `agentfleet_submit_v1`. Kept as it landed; migration 5 replaces the function's body. */
const SUBMIT_V1 = `
-- Admits and inserts a batch of tasks in one round trip; before this, PostgresStore.submitBatch took
-- four (BEGIN; the lock with the reads; the inserts; COMMIT), and under load each cost about as much
-- as the work itself. The rules are the ones the store applied in TypeScript, in the same order:
--   1. The schema's admission advisory lock (p_lock_key, the key lockNamed(db, 'admission') takes, so
--      this and the older code exclude each other while a cluster is upgraded). Every read below runs
--      after it, in a new snapshot, so counts include what the previous holder committed.
--   2. The number of queued tasks, each batch user's active (queued + running) tasks, and the stored
--      task of each (user, idempotency key) of the batch.
--   3. Each task in batch order: a key with a stored task is a duplicate of that row; a key inserted
--      earlier in this batch is a duplicate of that insert; otherwise a full queue refuses it
--      (queue_full), then a user at the limit (user_limit); otherwise it is inserted (queued, eligible
--      at its creation time) and counted.
--   4. One pg_notify(p_channel, p_payload) when anything was inserted (delivered at commit).
-- Returns one row per task, o_ord its 1-based position in the batch, o_kind one of inserted,
-- duplicate, queue_full, user_limit, and o_task the row as JSON (null when refused).
--   p_tasks       the batch, a JSON array of objects with the columns the insert writes: id, user_id,
--                 task_type, description, priority, priority_key, max_retries, timeout_ms, input_json,
--                 idempotency_key (each of the last three may be null), created_at (also run_at)
--   p_capacity    most queued tasks (AdmissionLimits.queueCapacity)
--   p_max_active  most active tasks per user (AdmissionLimits.maxTasksPerUser)
--   p_lock_key    key of the admission advisory lock
--   p_channel, p_payload  the wake-up notification
CREATE FUNCTION agentfleet_submit_v1(
  p_tasks jsonb, p_capacity bigint, p_max_active bigint, p_lock_key bigint, p_channel text, p_payload text
) RETURNS TABLE (o_ord integer, o_kind text, o_task jsonb)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
  t tasks%ROWTYPE;
  b record;
  queued integer;
  -- {user: active tasks}, counting this batch's inserts.
  active jsonb;
  -- {[user, key] as text: task row}: stored before this call, and inserted by it.
  stored jsonb;
  key_users text[];
  key_values text[];
  inserted jsonb := '{}'::jsonb;
  pair text;
  v_active integer;
  any_inserted boolean := false;
BEGIN
  IF jsonb_typeof(p_tasks) IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION 'agentfleet_submit_v1: p_tasks must be a JSON array of tasks, got %', jsonb_typeof(p_tasks);
  END IF;
  IF jsonb_array_length(p_tasks) = 0 THEN
    RETURN;
  END IF;

  PERFORM pg_advisory_xact_lock(p_lock_key);

  SELECT count(*) INTO queued FROM tasks WHERE status = 'queued';
  SELECT COALESCE(jsonb_object_agg(u.user_id, (SELECT count(*) FROM tasks
      WHERE user_id = u.user_id AND status IN ('queued', 'running'))), '{}'::jsonb)
    INTO active
    FROM (SELECT DISTINCT x.user_id FROM jsonb_to_recordset(p_tasks) AS x(user_id text)) AS u;
  -- The = ANY conditions let the planner find the rows by index (it cannot see how few the batch holds).
  SELECT array_agg(x.user_id), array_agg(x.idempotency_key) INTO key_users, key_values
    FROM jsonb_to_recordset(p_tasks) AS x(user_id text, idempotency_key text)
    WHERE x.idempotency_key IS NOT NULL;
  stored := '{}'::jsonb;
  IF key_values IS NOT NULL THEN
    SELECT COALESCE(jsonb_object_agg(jsonb_build_array(s.user_id, s.idempotency_key)::text, to_jsonb(s)), '{}'::jsonb)
      INTO stored
      FROM tasks s
      WHERE s.user_id = ANY (key_users) AND s.idempotency_key = ANY (key_values)
        AND (s.user_id, s.idempotency_key) IN (SELECT k.u, k.v FROM unnest(key_users, key_values) AS k(u, v));
  END IF;

  FOR b IN SELECT e.ord, x.* FROM jsonb_array_elements(p_tasks) WITH ORDINALITY AS e(task, ord),
      jsonb_to_record(e.task) AS x(id text, user_id text, task_type text, description text, priority text,
        priority_key bigint, max_retries integer, timeout_ms bigint, input_json text, idempotency_key text,
        created_at bigint)
      ORDER BY e.ord LOOP
    o_ord := b.ord;
    IF b.idempotency_key IS NOT NULL THEN
      pair := jsonb_build_array(b.user_id, b.idempotency_key)::text;
      -- A stored task first, else one this batch inserted.
      IF stored ? pair OR inserted ? pair THEN
        o_kind := 'duplicate';
        o_task := COALESCE(stored -> pair, inserted -> pair);
        RETURN NEXT;
        CONTINUE;
      END IF;
    END IF;
    v_active := COALESCE((active ->> b.user_id)::integer, 0);
    IF queued >= p_capacity THEN
      o_kind := 'queue_full';
      o_task := NULL;
    ELSIF v_active >= p_max_active THEN
      o_kind := 'user_limit';
      o_task := NULL;
    ELSE
      INSERT INTO tasks (id, user_id, task_type, description, priority, priority_key,
          status, max_retries, timeout_ms, input_json, idempotency_key, created_at, run_at)
        VALUES (b.id, b.user_id, b.task_type, b.description, b.priority, b.priority_key,
          'queued', b.max_retries, b.timeout_ms, b.input_json, b.idempotency_key, b.created_at, b.created_at)
        RETURNING * INTO t;
      o_kind := 'inserted';
      o_task := to_jsonb(t);
      IF b.idempotency_key IS NOT NULL THEN
        inserted := inserted || jsonb_build_object(pair, o_task);
      END IF;
      queued := queued + 1;
      active := active || jsonb_build_object(b.user_id, v_active + 1);
      any_inserted := true;
    END IF;
    RETURN NEXT;
  END LOOP;

  IF any_inserted THEN
    PERFORM pg_notify(p_channel, p_payload);
  END IF;
END;
$$;
`;

/**
 * Returns `text` with `from` replaced by `to`, where `from` occurs exactly once: a migration derived
 * from an earlier one fails when this module loads, not in a database, if the text it edits is not there.
 */
function replaceOnce(text: string, from: string, to: string): string {
  const at = text.indexOf(from);
  if (at < 0 || text.indexOf(from, at + 1) >= 0) {
    throw new Error(`migration text: expected exactly one ${JSON.stringify(from.slice(0, 60))}`);
  }
  return text.slice(0, at) + to + text.slice(at + from.length);
}

/**
 * Migration 5: `agentfleet_submit_v1` with the same signature and the same results, counting less.
 * Before it, every submit counted all queued tasks and all active tasks of each batch user, reading an
 * index entry and a table row for each (rows that no vacuum has marked all-visible yet are read from the
 * table): ~1 ms and ~2.3 ms at a 9,000-task queue, most of a one-task submit. Now:
 *   - Counts stop at the limit they are compared with (LIMIT p_capacity, LIMIT p_max_active): a count
 *     that reaches its limit refuses exactly as the full count did, and one below it is exact.
 *   - The per-user counts are skipped when the queued and running tasks of all users together, plus the
 *     batch, do not exceed p_max_active (no user can then reach it), and when the queue is full (every
 *     new task of the batch is then refused as queue_full before its user is looked at).
 * A replacement rather than a new name: the results are the same for every input, so processes of the
 * previous version, which call agentfleet_submit_v1 too, keep working and count less as well.
 */
const SUBMIT_V1_BOUNDED_COUNTS = [
  ['CREATE FUNCTION agentfleet_submit_v1(', 'CREATE OR REPLACE FUNCTION agentfleet_submit_v1('],
  ['  queued integer;\n', '  queued integer;\n  running integer;\n'],
  [
    `  SELECT count(*) INTO queued FROM tasks WHERE status = 'queued';
  SELECT COALESCE(jsonb_object_agg(u.user_id, (SELECT count(*) FROM tasks
      WHERE user_id = u.user_id AND status IN ('queued', 'running'))), '{}'::jsonb)
    INTO active
    FROM (SELECT DISTINCT x.user_id FROM jsonb_to_recordset(p_tasks) AS x(user_id text)) AS u;
`,
    `  -- Counted up to the limits they are compared with (see migration 5).
  SELECT count(*) INTO queued FROM (SELECT 1 FROM tasks WHERE status = 'queued' LIMIT p_capacity) AS c;
  SELECT count(*) INTO running FROM (SELECT 1 FROM tasks WHERE status = 'running' LIMIT p_max_active) AS c;
  IF queued >= p_capacity OR queued + running + jsonb_array_length(p_tasks) <= p_max_active THEN
    -- No user can reach p_max_active with this batch, or the queue refuses every new task first.
    active := '{}'::jsonb;
  ELSE
    SELECT COALESCE(jsonb_object_agg(u.user_id, (SELECT count(*) FROM (SELECT 1 FROM tasks
        WHERE user_id = u.user_id AND status IN ('queued', 'running') LIMIT p_max_active) AS c)), '{}'::jsonb)
      INTO active
      FROM (SELECT DISTINCT x.user_id FROM jsonb_to_recordset(p_tasks) AS x(user_id text)) AS u;
  END IF;
`,
  ],
].reduce((text, [from, to]) => replaceOnce(text, from ?? '', to ?? ''), SUBMIT_V1);

/** Migration 3's SQL (never edited; migration 6 derives its lease function from it). */
const MIGRATION_3 = `
-- Agent selection inside the lease functions: the user's least-recently-used idle agent of a type,
-- in exactly the lease's order (last_used_at NULLS FIRST, created_at, seq), so the pick is an index
-- walk that stops at the first unlocked idle agent. agents_pick (migration 1) ends in last_used_at
-- NULLS LAST and covers every status, so each pick read all of the pair's idle agents (and their
-- dead versions left by earlier leases and settles) and sorted them.
CREATE INDEX agents_idle_lru ON agents (user_id, agent_type, last_used_at ASC NULLS FIRST, created_at, seq)
  WHERE status = 'idle';

-- agentfleet_lease_v3: migration 2's agentfleet_lease_v2 with the same locking and results, two changes.
-- 1. The walk is linear: one cursor over the queue (FOR UPDATE SKIP LOCKED, fetched one row at a time,
--    so a row is locked only when the walk reaches it) instead of one LIMIT 1 query per row. Each of
--    those queries started at the head of tasks_lease_order and stepped over the entries of every row
--    the call had already taken or passed (their old versions stay in the index until the transaction
--    ends), so a call cost grew with the square of the rows it looked at. The cursor is reopened after
--    the row last looked at whenever a type runs out of allowance, so rows of that type are then not
--    locked. The cursor sees the queue as of its opening.
-- 2. The Store port's optional headroom: a task of priority p is leased only while at least
--    p_headroom[p] of the p_limit slots stay free after it, so a backlog of low tasks leaves the last
--    slots to more urgent work. p_stop_keys[p] is the priority key of a task of priority p enqueued a
--    minute from now: once the walk is below it for the lowest priority still allowed, no later row can
--    be leased and the walk ends instead of locking the rest of the backlog.
-- A new name rather than a replacement, so processes of the previous version keep calling v2.
CREATE FUNCTION agentfleet_lease_v3(
  p_owner text, p_limit integer, p_now bigint, p_expires bigint, p_exclude text[], p_caps jsonb,
  p_max_agents integer, p_agent_ids text[], p_tokens text[], p_max_scan integer, p_lock_ns integer,
  p_breaker_timeout bigint, p_type_limits jsonb, p_limit_ns integer, p_headroom jsonb, p_stop_keys jsonb
) RETURNS TABLE (o_task jsonb, o_agent jsonb, o_token text, o_created boolean)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
  t tasks%ROWTYPE;
  a agents%ROWTYPE;
  b breakers%ROWTYPE;
  leased integer := 0;
  created integer := 0;
  scanned integer := 0;
  after_key bigint := 9223372036854775807;
  after_seq bigint := 0;
  -- Types this call does not lease (grows as allowances run out).
  skip_types text[] := COALESCE(p_exclude, '{}');
  -- {type: n}: most further tasks of the type this call may lease (local cap, probe, type limit).
  allow jsonb := COALESCE(p_caps, '{}'::jsonb);
  probe_types text[] := '{}';
  blocked text[] := '{}';
  creation_locked boolean := false;
  pair text;
  v_type text;
  v_left integer;
  n integer;
  is_new boolean;
  -- The walk's cursor, and whether it must be (re)opened because skip_types changed.
  walk refcursor;
  walk_open boolean := false;
  reopen boolean := true;
  -- Low-priority headroom: slots a priority leaves free, and the walk's stop rule (see above).
  v_stop bigint;
  v_p text;
BEGIN
  FOR b IN SELECT * FROM breakers WHERE state <> 'closed' ORDER BY task_type COLLATE "C" FOR UPDATE LOOP
    IF b.state = 'open' AND b.opened_at IS NOT NULL AND p_now >= b.opened_at + p_breaker_timeout THEN
      UPDATE breakers SET state = 'half_open', probe_task_id = NULL, updated_at = p_now
        WHERE task_type = b.task_type;
      b.state := 'half_open';
      b.probe_task_id := NULL;
    END IF;
    IF b.state = 'half_open' AND b.probe_task_id IS NULL THEN
      probe_types := probe_types || b.task_type;
      allow := allow || jsonb_build_object(b.task_type, LEAST(COALESCE((allow ->> b.task_type)::integer, 1), 1));
    ELSE
      skip_types := skip_types || b.task_type;
    END IF;
  END LOOP;

  IF p_type_limits IS NOT NULL AND p_type_limits <> '{}'::jsonb THEN
    FOR v_type IN SELECT l.k FROM jsonb_object_keys(p_type_limits) AS l(k)
        WHERE NOT (l.k = ANY (skip_types)) ORDER BY hashtext(l.k), l.k COLLATE "C" LOOP
      PERFORM pg_advisory_xact_lock(p_limit_ns, hashtext(v_type));
    END LOOP;
    FOR v_type, v_left IN SELECT l.k, (p_type_limits ->> l.k)::integer
          - (SELECT count(*) FROM tasks WHERE status = 'running' AND task_type = l.k)::integer
        FROM jsonb_object_keys(p_type_limits) AS l(k) WHERE NOT (l.k = ANY (skip_types)) LOOP
      allow := allow || jsonb_build_object(v_type, LEAST(COALESCE((allow ->> v_type)::integer, v_left), v_left));
    END LOOP;
  END IF;

  FOR v_type IN SELECT e.key FROM jsonb_each_text(allow) AS e WHERE e.value::integer <= 0 LOOP
    skip_types := skip_types || v_type;
  END LOOP;

  WHILE leased < p_limit AND scanned < p_max_scan LOOP
    IF reopen THEN
      IF walk_open THEN
        CLOSE walk;
      END IF;
      OPEN walk NO SCROLL FOR SELECT * FROM tasks
        WHERE status = 'queued' AND run_at <= p_now AND NOT (task_type = ANY (skip_types))
          AND (priority_key < after_key OR (priority_key = after_key AND seq > after_seq))
        ORDER BY priority_key DESC, seq ASC
        FOR UPDATE SKIP LOCKED;
      walk_open := true;
      reopen := false;
    END IF;
    FETCH walk INTO t;
    EXIT WHEN NOT FOUND;
    scanned := scanned + 1;
    after_key := t.priority_key;
    after_seq := t.seq;
    IF leased + COALESCE((p_headroom ->> t.priority)::integer, 0) >= p_limit THEN
      -- Kept free for more urgent work. Keys only fall along the walk: below the smallest key the
      -- lowest priority still allowed can have (p_stop_keys: enqueued a minute from now), nothing fits.
      v_stop := NULL;
      FOREACH v_p IN ARRAY ARRAY['urgent', 'high', 'medium', 'low'] LOOP
        IF leased + COALESCE((p_headroom ->> v_p)::integer, 0) < p_limit THEN
          v_stop := (p_stop_keys ->> v_p)::bigint;
        END IF;
      END LOOP;
      EXIT WHEN v_stop IS NULL OR t.priority_key < v_stop;
      CONTINUE;
    END IF;
    pair := t.user_id || chr(1) || t.task_type;
    IF pair = ANY (blocked) THEN
      CONTINUE;
    END IF;
    is_new := false;
    SELECT * INTO a FROM agents
      WHERE user_id = t.user_id AND agent_type = t.task_type AND status = 'idle'
      ORDER BY last_used_at ASC NULLS FIRST, created_at ASC, seq ASC
      LIMIT 1
      FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
      IF created >= COALESCE(array_length(p_agent_ids, 1), 0) THEN
        blocked := blocked || pair;
        CONTINUE;
      END IF;
      IF NOT creation_locked THEN
        PERFORM pg_advisory_xact_lock(p_lock_ns, 0);
        creation_locked := true;
      END IF;
      SELECT count(*) INTO n FROM agents WHERE user_id = t.user_id AND status <> 'retired';
      IF n >= p_max_agents THEN
        blocked := blocked || pair;
        CONTINUE;
      END IF;
      SELECT count(*) INTO n FROM agents WHERE user_id = t.user_id AND agent_type = t.task_type;
      created := created + 1;
      INSERT INTO agents (id, user_id, agent_type, name, status, created_at)
        VALUES (p_agent_ids[created], t.user_id, t.task_type, t.task_type || '-' || (n + 1), 'idle', p_now)
        RETURNING * INTO a;
      is_new := true;
    END IF;
    leased := leased + 1;
    UPDATE tasks SET status = 'running', attempts = attempts + 1, agent_id = a.id, started_at = p_now,
        finished_at = NULL, lease_owner = p_owner, lease_token = p_tokens[leased], lease_expires_at = p_expires
      WHERE seq = t.seq
      RETURNING * INTO t;
    INSERT INTO attempts (task_id, attempt, agent_id, lease_owner, started_at, outcome)
      VALUES (t.id, t.attempts, a.id, p_owner, p_now, 'running');
    UPDATE agents SET status = 'busy', current_task_id = t.id, last_used_at = p_now
      WHERE seq = a.seq
      RETURNING * INTO a;
    IF t.task_type = ANY (probe_types) THEN
      UPDATE breakers SET probe_task_id = t.id, updated_at = p_now WHERE task_type = t.task_type;
    END IF;
    v_left := (allow ->> t.task_type)::integer;
    IF v_left IS NOT NULL THEN
      allow := allow || jsonb_build_object(t.task_type, v_left - 1);
      IF v_left - 1 <= 0 THEN
        skip_types := skip_types || t.task_type;
        reopen := true;
      END IF;
    END IF;
    o_task := to_jsonb(t);
    o_agent := to_jsonb(a);
    o_token := p_tokens[leased];
    o_created := is_new;
    RETURN NEXT;
  END LOOP;
  IF walk_open THEN
    CLOSE walk;
  END IF;
END;
$$;
`;

/**
 * Migration 6: `agentfleet_lease_v3` with the same signature and the same results, counting agents
 * once per call. Each agent it created cost two counts over all of the user's agents (for the limit and
 * for the new agent's number), so a lease creating many agents for a user who has many cost the square.
 * Now each count is made once per call, under the agent-creation lock that the call holds until it
 * commits (every agent creation takes it), and kept up to date as the call creates agents. An agent
 * retired meanwhile can only make the kept count high, never let the limit be passed.
 * A replacement rather than a new name, like migration 5: processes of the previous version call v3 too.
 */
const LEASE_V3_COUNTING_ONCE = [
  ['CREATE FUNCTION agentfleet_lease_v3(', 'CREATE OR REPLACE FUNCTION agentfleet_lease_v3('],
  [
    '  n integer;\n',
    "  n integer;\n  -- {user: agents not retired}, {user chr(1) type: agents of the type}: counted once (migration 6).\n  owned jsonb := '{}';\n  named jsonb := '{}';\n",
  ],
  [
    `      SELECT count(*) INTO n FROM agents WHERE user_id = t.user_id AND status <> 'retired';
      IF n >= p_max_agents THEN
        blocked := blocked || pair;
        CONTINUE;
      END IF;
      SELECT count(*) INTO n FROM agents WHERE user_id = t.user_id AND agent_type = t.task_type;
      created := created + 1;
`,
    `      n := (owned ->> t.user_id)::integer;
      IF n IS NULL THEN
        SELECT count(*) INTO n FROM agents WHERE user_id = t.user_id AND status <> 'retired';
      END IF;
      IF n >= p_max_agents THEN
        owned := owned || jsonb_build_object(t.user_id, n);
        blocked := blocked || pair;
        CONTINUE;
      END IF;
      owned := owned || jsonb_build_object(t.user_id, n + 1);
      n := (named ->> pair)::integer;
      IF n IS NULL THEN
        SELECT count(*) INTO n FROM agents WHERE user_id = t.user_id AND agent_type = t.task_type;
      END IF;
      named := named || jsonb_build_object(pair, n + 1);
      created := created + 1;
`,
  ],
].reduce(
  (text, [from, to]) => replaceOnce(text, from ?? '', to ?? ''),
  MIGRATION_3.slice(MIGRATION_3.indexOf('CREATE FUNCTION agentfleet_lease_v3(')),
);

/** Migration 5's submit, reading the queue's size from the counter of migration 7. */
const SUBMIT_V1_QUEUED_COUNT = [
  [
    '  -- Counted up to the limits they are compared with (see migration 5).\n',
    '  -- The queue from its counter (migration 7); running tasks up to the limit (migration 5).\n',
  ],
  [
    "  SELECT count(*) INTO queued FROM (SELECT 1 FROM tasks WHERE status = 'queued' LIMIT p_capacity) AS c;\n",
    '  SELECT COALESCE(sum(n), 0) INTO queued FROM queued_count;\n',
  ],
].reduce((text, [from, to]) => replaceOnce(text, from ?? '', to ?? ''), SUBMIT_V1_BOUNDED_COUNTS);

/**
 * Migration 7: the number of queued tasks kept by triggers, and the submit reading it. Counting the
 * queue in each submit read an index entry and a table row per queued task (rows that no vacuum has
 * marked all-visible are read from the table), under the admission lock that serialises submits: at
 * 10,000 queued tasks a one-task submit took 3.8 ms against 1.0 ms on an empty queue, and every submit of
 * the cluster waited for it. Now the count is a sum over 32 rows.
 *   - The rows are shards: a transaction adds to the row of its backend (`pg_backend_pid() % 32`), so
 *     leases and settles of different processes rarely wait for each other's commit on one row.
 *   - One write per transaction: a row trigger adds each change to the transaction's delta, a setting
 *     (`agentfleet.queued_<table oid>`, set LOCAL, so an aborted transaction or subtransaction reverts it
 *     with the rows it changed). Writing the shard once per row made a transaction that changed many rows
 *     update one row that many times, each update walking the versions the earlier ones had left: an
 *     insert of 300,000 tasks in one statement ran for more than ten minutes (5.5 s this way).
 *   - A deferred trigger on the same changes runs at commit: the first writes the delta to the shard and
 *     zeroes it, the others find nothing to do. So a shard's lock is taken after every other lock the
 *     transaction takes and held only while it commits: waiting for it can never close a cycle of waits
 *     (no deadlock), and a count read under the admission lock sees what committed before it, like the
 *     count of rows it replaces (an uncommitted lease's tasks are still queued to it).
 *   - The triggers fire only when a row enters or leaves `queued`: a settle that ends a running task
 *     writes nothing here.
 *   - The triggers are created before the count is taken: creating them locks `tasks` against writes
 *     until this migration commits, so no change falls between the count and the triggers.
 */
const QUEUED_COUNT = `
CREATE TABLE queued_count (
  shard integer PRIMARY KEY,
  n bigint NOT NULL
);

CREATE FUNCTION agentfleet_queued_delta() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  k text := 'agentfleet.queued_' || TG_RELID;
  d integer;
BEGIN
  IF TG_OP = 'INSERT' THEN
    d := 1;
  ELSIF TG_OP = 'DELETE' THEN
    d := -1;
  ELSIF NEW.status = 'queued' THEN
    d := 1;
  ELSE
    d := -1;
  END IF;
  PERFORM set_config(k, (COALESCE(NULLIF(current_setting(k, true), ''), '0')::bigint + d)::text, true);
  RETURN NULL;
END;
$$;

CREATE FUNCTION agentfleet_queued_apply() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
  k text := 'agentfleet.queued_' || TG_RELID;
  d bigint := COALESCE(NULLIF(current_setting(k, true), ''), '0')::bigint;
BEGIN
  IF d <> 0 THEN
    PERFORM set_config(k, '0', true);
    UPDATE queued_count SET n = n + d WHERE shard = pg_backend_pid() % 32;
  END IF;
  RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_queued_delta_insert AFTER INSERT ON tasks
  FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION agentfleet_queued_delta();
CREATE TRIGGER tasks_queued_delta_update AFTER UPDATE OF status ON tasks
  FOR EACH ROW WHEN ((OLD.status = 'queued') <> (NEW.status = 'queued'))
  EXECUTE FUNCTION agentfleet_queued_delta();
CREATE TRIGGER tasks_queued_delta_delete AFTER DELETE ON tasks
  FOR EACH ROW WHEN (OLD.status = 'queued') EXECUTE FUNCTION agentfleet_queued_delta();
CREATE CONSTRAINT TRIGGER tasks_queued_apply_insert AFTER INSERT ON tasks
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.status = 'queued')
  EXECUTE FUNCTION agentfleet_queued_apply();
CREATE CONSTRAINT TRIGGER tasks_queued_apply_update AFTER UPDATE OF status ON tasks
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN ((OLD.status = 'queued') <> (NEW.status = 'queued'))
  EXECUTE FUNCTION agentfleet_queued_apply();
CREATE CONSTRAINT TRIGGER tasks_queued_apply_delete AFTER DELETE ON tasks
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.status = 'queued')
  EXECUTE FUNCTION agentfleet_queued_apply();

INSERT INTO queued_count (shard, n) SELECT s, 0 FROM generate_series(0, 31) AS s;
UPDATE queued_count SET n = (SELECT count(*) FROM tasks WHERE status = 'queued') WHERE shard = 0;
${SUBMIT_V1_QUEUED_COUNT}`;

/** Every migration, in version order. Append only. */
export const POSTGRES_MIGRATIONS: readonly PostgresMigration[] = [
  {
    version: 1,
    name: 'initial schema',
    sql: `
CREATE TABLE tasks (
  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id text NOT NULL UNIQUE,
  user_id text NOT NULL,
  task_type text NOT NULL,
  description text NOT NULL,
  priority text NOT NULL CHECK (priority IN ('urgent', 'high', 'medium', 'low')),
  priority_key bigint NOT NULL,
  status text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
  attempts integer NOT NULL DEFAULT 0,
  max_retries integer NOT NULL,
  timeout_ms bigint,
  agent_id text,
  input_json text,
  result_json text,
  error text,
  checkpoint_json text,
  checkpoint_at bigint,
  idempotency_key text,
  cancel_requested boolean NOT NULL DEFAULT false,
  created_at bigint NOT NULL,
  started_at bigint,
  finished_at bigint,
  run_at bigint NOT NULL,
  lease_owner text,
  lease_token text,
  lease_expires_at bigint
);
-- The lease scan: queued tasks by priority key, FIFO on ties. Partial, so it only holds the queue.
CREATE INDEX tasks_lease_order ON tasks (priority_key DESC, seq) WHERE status = 'queued';
-- Retry delays: the earliest future run_at (nextRunAt).
CREATE INDEX tasks_queued_run_at ON tasks (run_at) WHERE status = 'queued';
-- Heartbeats and reclaim touch only running tasks.
CREATE INDEX tasks_running_owner ON tasks (lease_owner) WHERE status = 'running';
CREATE INDEX tasks_running_expiry ON tasks (lease_expires_at) WHERE status = 'running';
-- Per-user admission counts and listing newest first.
CREATE INDEX tasks_user_status ON tasks (user_id, status);
CREATE INDEX tasks_user_seq ON tasks (user_id, seq);
CREATE INDEX tasks_status ON tasks (status);
CREATE UNIQUE INDEX tasks_idempotency ON tasks (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE attempts (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  task_id text NOT NULL REFERENCES tasks (id),
  attempt integer NOT NULL,
  agent_id text,
  lease_owner text,
  started_at bigint NOT NULL,
  finished_at bigint,
  outcome text NOT NULL CHECK (outcome IN ('running', 'succeeded', 'failed', 'cancelled', 'released', 'lost')),
  error text,
  execution_ms bigint
);
CREATE INDEX attempts_task ON attempts (task_id, id);

CREATE TABLE agents (
  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id text NOT NULL UNIQUE,
  user_id text NOT NULL,
  agent_type text NOT NULL,
  name text NOT NULL,
  status text NOT NULL CHECK (status IN ('idle', 'busy', 'unhealthy', 'retired')),
  created_at bigint NOT NULL,
  last_used_at bigint,
  current_task_id text,
  total_executions integer NOT NULL DEFAULT 0,
  successful_executions integer NOT NULL DEFAULT 0,
  consecutive_failures integer NOT NULL DEFAULT 0,
  last_success_at bigint,
  last_failure_at bigint,
  unhealthy_since bigint,
  recoveries integer NOT NULL DEFAULT 0,
  retired_at bigint
);
-- Agent selection: the user's least-recently-used idle agent of a type.
CREATE INDEX agents_pick ON agents (user_id, agent_type, status, last_used_at);
CREATE INDEX agents_status ON agents (status);

-- Totals that never go down, per user and type, updated inside the settling transaction. Each
-- (user, type) is spread over a few shard rows so settles in several processes do not queue on one
-- hot row lock; readers sum the shards.
CREATE TABLE type_stats (
  user_id text NOT NULL,
  task_type text NOT NULL,
  shard smallint NOT NULL,
  succeeded bigint NOT NULL DEFAULT 0,
  failed bigint NOT NULL DEFAULT 0,
  cancelled bigint NOT NULL DEFAULT 0,
  retried bigint NOT NULL DEFAULT 0,
  execution_ms_total bigint NOT NULL DEFAULT 0,
  execution_count bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (user_id, task_type, shard)
);

CREATE TABLE events (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at_ms bigint NOT NULL,
  kind text NOT NULL,
  user_id text,
  task_id text,
  agent_id text,
  data_json text NOT NULL
);
CREATE INDEX events_recent ON events (at_ms, id);
CREATE INDEX events_user ON events (user_id, at_ms, id);

-- Leases up to p_limit tasks in one round trip, with the agent policy of LeaseRequest (the same walk
-- as the SQLite store's, in priority-key order). Candidates are taken one row at a time with
-- FOR UPDATE SKIP LOCKED, so concurrent leasers in other processes walk past each other's rows instead
-- of waiting or double-leasing, and a call locks only the rows it looks at.
-- Creating an agent first takes the schema's agent-creation advisory lock (waiting for it), so the
-- agent-limit count includes agents other leasers are creating right now. It is one lock, never
-- waited for while holding another (every row lock here is SKIP LOCKED), so it cannot deadlock; and
-- once agents exist, calls that reuse idle agents never take it.
--   p_owner       instance id recorded on the leased tasks and attempts
--   p_limit       most tasks to lease
--   p_now         epoch ms; tasks with run_at <= p_now are eligible
--   p_expires     lease expiry (epoch ms) written to each leased task
--   p_exclude     task types not to lease
--   p_caps        {type: n}: at most n tasks of that type in this call
--   p_max_agents  the user's limit of agents that are not retired
--   p_agent_ids   ids for agents created here, used in order
--   p_tokens      one fencing token per leased task, used in order
--   p_max_scan    most queued rows looked at
--   p_lock_ns     key (per schema) of the agent-creation advisory lock
CREATE FUNCTION agentfleet_lease(
  p_owner text, p_limit integer, p_now bigint, p_expires bigint, p_exclude text[], p_caps jsonb,
  p_max_agents integer, p_agent_ids text[], p_tokens text[], p_max_scan integer, p_lock_ns integer
) RETURNS TABLE (o_task jsonb, o_agent jsonb, o_token text, o_created boolean)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
  t tasks%ROWTYPE;
  a agents%ROWTYPE;
  leased integer := 0;
  created integer := 0;
  scanned integer := 0;
  after_key bigint := 9223372036854775807;
  after_seq bigint := 0;
  used jsonb := '{}'::jsonb;
  blocked text[] := '{}';
  creation_locked boolean := false;
  pair text;
  cap integer;
  n integer;
  is_new boolean;
BEGIN
  WHILE leased < p_limit AND scanned < p_max_scan LOOP
    SELECT * INTO t FROM tasks
      WHERE status = 'queued' AND run_at <= p_now AND NOT (task_type = ANY (p_exclude))
        AND (priority_key < after_key OR (priority_key = after_key AND seq > after_seq))
      ORDER BY priority_key DESC, seq ASC
      LIMIT 1
      FOR UPDATE SKIP LOCKED;
    EXIT WHEN NOT FOUND;
    scanned := scanned + 1;
    after_key := t.priority_key;
    after_seq := t.seq;
    cap := (p_caps ->> t.task_type)::integer;
    IF cap IS NOT NULL AND COALESCE((used ->> t.task_type)::integer, 0) >= cap THEN
      CONTINUE;
    END IF;
    pair := t.user_id || chr(1) || t.task_type;
    IF pair = ANY (blocked) THEN
      CONTINUE;
    END IF;
    is_new := false;
    SELECT * INTO a FROM agents
      WHERE user_id = t.user_id AND agent_type = t.task_type AND status = 'idle'
      ORDER BY last_used_at ASC NULLS FIRST, created_at ASC, seq ASC
      LIMIT 1
      FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
      IF created >= COALESCE(array_length(p_agent_ids, 1), 0) THEN
        blocked := blocked || pair;
        CONTINUE;
      END IF;
      IF NOT creation_locked THEN
        PERFORM pg_advisory_xact_lock(p_lock_ns, 0);
        creation_locked := true;
      END IF;
      SELECT count(*) INTO n FROM agents WHERE user_id = t.user_id AND status <> 'retired';
      IF n >= p_max_agents THEN
        blocked := blocked || pair;
        CONTINUE;
      END IF;
      SELECT count(*) INTO n FROM agents WHERE user_id = t.user_id AND agent_type = t.task_type;
      created := created + 1;
      INSERT INTO agents (id, user_id, agent_type, name, status, created_at)
        VALUES (p_agent_ids[created], t.user_id, t.task_type, t.task_type || '-' || (n + 1), 'idle', p_now)
        RETURNING * INTO a;
      is_new := true;
    END IF;
    leased := leased + 1;
    UPDATE tasks SET status = 'running', attempts = attempts + 1, agent_id = a.id, started_at = p_now,
        finished_at = NULL, lease_owner = p_owner, lease_token = p_tokens[leased], lease_expires_at = p_expires
      WHERE seq = t.seq
      RETURNING * INTO t;
    INSERT INTO attempts (task_id, attempt, agent_id, lease_owner, started_at, outcome)
      VALUES (t.id, t.attempts, a.id, p_owner, p_now, 'running');
    UPDATE agents SET status = 'busy', current_task_id = t.id, last_used_at = p_now
      WHERE seq = a.seq
      RETURNING * INTO a;
    used := jsonb_set(used, ARRAY[t.task_type], to_jsonb(COALESCE((used ->> t.task_type)::integer, 0) + 1));
    o_task := to_jsonb(t);
    o_agent := to_jsonb(a);
    o_token := p_tokens[leased];
    o_created := is_new;
    RETURN NEXT;
  END LOOP;
END;
$$;
`,
  },
  {
    version: 2,
    name: 'shared breakers, instances, type limits',
    sql: `
-- Circuit breakers shared by every process, one row per task type that ever failed (no row: closed, no
-- failures). Written by settles (verdicts), leases (open -> half_open, the probe) and reclaims (a lost
-- probe). Leases lock only rows that are not closed, so the happy path never serialises leasers.
CREATE TABLE breakers (
  task_type text PRIMARY KEY,
  state text NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
  failures integer NOT NULL,
  opened_at bigint,
  probe_task_id text,
  updated_at bigint NOT NULL
);

-- The processes of the cluster, as each last reported with its heartbeat.
CREATE TABLE instances (
  id text PRIMARY KEY,
  host text NOT NULL,
  pid integer NOT NULL,
  started_at bigint NOT NULL,
  heartbeat_at bigint NOT NULL,
  slots_in_use integer NOT NULL,
  max_slots integer NOT NULL
);

-- Cluster-wide type limits count the running tasks of one type inside the lease.
CREATE INDEX tasks_running_type ON tasks (task_type) WHERE status = 'running';

-- agentfleet_lease (migration 1) plus shared breakers and cluster-wide type limits. The old function
-- stays, so processes of the previous version keep leasing while a cluster is upgraded.
-- Before the walk, in this order (every leaser takes these locks in the same order, so they cannot
-- deadlock; the walk's row locks are all SKIP LOCKED):
--   1. Breaker rows that are not closed are locked (FOR UPDATE, by task type; closed rows are not
--      locked). An open one past its timeout becomes half_open (written). Open types, and half-open
--      ones whose probe runs, are skipped; a half-open type without a probe may lease one task, which
--      is recorded as its probe_task_id before commit. A second leaser waits on the row lock and then
--      sees the probe, so exactly one probe runs cluster-wide.
--   2. For each limited type not already skipped, a transaction-level advisory lock (p_limit_ns,
--      hashtext(type)), in key order; then the running tasks of the type are counted (a new snapshot,
--      after the previous holder committed) and the call leases at most limit - running of it.
-- Parameters as agentfleet_lease, plus:
--   p_breaker_timeout  ms an open breaker waits before half-opening (BreakerRules.timeoutMs)
--   p_type_limits      {type: n}: at most n tasks of that type running cluster-wide
--   p_limit_ns         key (per schema) of the type-limit advisory locks
CREATE FUNCTION agentfleet_lease_v2(
  p_owner text, p_limit integer, p_now bigint, p_expires bigint, p_exclude text[], p_caps jsonb,
  p_max_agents integer, p_agent_ids text[], p_tokens text[], p_max_scan integer, p_lock_ns integer,
  p_breaker_timeout bigint, p_type_limits jsonb, p_limit_ns integer
) RETURNS TABLE (o_task jsonb, o_agent jsonb, o_token text, o_created boolean)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
  t tasks%ROWTYPE;
  a agents%ROWTYPE;
  b breakers%ROWTYPE;
  leased integer := 0;
  created integer := 0;
  scanned integer := 0;
  after_key bigint := 9223372036854775807;
  after_seq bigint := 0;
  -- Types this call does not lease (grows as allowances run out).
  skip_types text[] := COALESCE(p_exclude, '{}');
  -- {type: n}: most further tasks of the type this call may lease (local cap, probe, type limit).
  allow jsonb := COALESCE(p_caps, '{}'::jsonb);
  probe_types text[] := '{}';
  blocked text[] := '{}';
  creation_locked boolean := false;
  pair text;
  v_type text;
  v_left integer;
  n integer;
  is_new boolean;
BEGIN
  FOR b IN SELECT * FROM breakers WHERE state <> 'closed' ORDER BY task_type COLLATE "C" FOR UPDATE LOOP
    IF b.state = 'open' AND b.opened_at IS NOT NULL AND p_now >= b.opened_at + p_breaker_timeout THEN
      UPDATE breakers SET state = 'half_open', probe_task_id = NULL, updated_at = p_now
        WHERE task_type = b.task_type;
      b.state := 'half_open';
      b.probe_task_id := NULL;
    END IF;
    IF b.state = 'half_open' AND b.probe_task_id IS NULL THEN
      probe_types := probe_types || b.task_type;
      allow := allow || jsonb_build_object(b.task_type, LEAST(COALESCE((allow ->> b.task_type)::integer, 1), 1));
    ELSE
      skip_types := skip_types || b.task_type;
    END IF;
  END LOOP;

  IF p_type_limits IS NOT NULL AND p_type_limits <> '{}'::jsonb THEN
    FOR v_type IN SELECT l.k FROM jsonb_object_keys(p_type_limits) AS l(k)
        WHERE NOT (l.k = ANY (skip_types)) ORDER BY hashtext(l.k), l.k COLLATE "C" LOOP
      PERFORM pg_advisory_xact_lock(p_limit_ns, hashtext(v_type));
    END LOOP;
    FOR v_type, v_left IN SELECT l.k, (p_type_limits ->> l.k)::integer
          - (SELECT count(*) FROM tasks WHERE status = 'running' AND task_type = l.k)::integer
        FROM jsonb_object_keys(p_type_limits) AS l(k) WHERE NOT (l.k = ANY (skip_types)) LOOP
      allow := allow || jsonb_build_object(v_type, LEAST(COALESCE((allow ->> v_type)::integer, v_left), v_left));
    END LOOP;
  END IF;

  FOR v_type IN SELECT e.key FROM jsonb_each_text(allow) AS e WHERE e.value::integer <= 0 LOOP
    skip_types := skip_types || v_type;
  END LOOP;

  WHILE leased < p_limit AND scanned < p_max_scan LOOP
    SELECT * INTO t FROM tasks
      WHERE status = 'queued' AND run_at <= p_now AND NOT (task_type = ANY (skip_types))
        AND (priority_key < after_key OR (priority_key = after_key AND seq > after_seq))
      ORDER BY priority_key DESC, seq ASC
      LIMIT 1
      FOR UPDATE SKIP LOCKED;
    EXIT WHEN NOT FOUND;
    scanned := scanned + 1;
    after_key := t.priority_key;
    after_seq := t.seq;
    pair := t.user_id || chr(1) || t.task_type;
    IF pair = ANY (blocked) THEN
      CONTINUE;
    END IF;
    is_new := false;
    SELECT * INTO a FROM agents
      WHERE user_id = t.user_id AND agent_type = t.task_type AND status = 'idle'
      ORDER BY last_used_at ASC NULLS FIRST, created_at ASC, seq ASC
      LIMIT 1
      FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
      IF created >= COALESCE(array_length(p_agent_ids, 1), 0) THEN
        blocked := blocked || pair;
        CONTINUE;
      END IF;
      IF NOT creation_locked THEN
        PERFORM pg_advisory_xact_lock(p_lock_ns, 0);
        creation_locked := true;
      END IF;
      SELECT count(*) INTO n FROM agents WHERE user_id = t.user_id AND status <> 'retired';
      IF n >= p_max_agents THEN
        blocked := blocked || pair;
        CONTINUE;
      END IF;
      SELECT count(*) INTO n FROM agents WHERE user_id = t.user_id AND agent_type = t.task_type;
      created := created + 1;
      INSERT INTO agents (id, user_id, agent_type, name, status, created_at)
        VALUES (p_agent_ids[created], t.user_id, t.task_type, t.task_type || '-' || (n + 1), 'idle', p_now)
        RETURNING * INTO a;
      is_new := true;
    END IF;
    leased := leased + 1;
    UPDATE tasks SET status = 'running', attempts = attempts + 1, agent_id = a.id, started_at = p_now,
        finished_at = NULL, lease_owner = p_owner, lease_token = p_tokens[leased], lease_expires_at = p_expires
      WHERE seq = t.seq
      RETURNING * INTO t;
    INSERT INTO attempts (task_id, attempt, agent_id, lease_owner, started_at, outcome)
      VALUES (t.id, t.attempts, a.id, p_owner, p_now, 'running');
    UPDATE agents SET status = 'busy', current_task_id = t.id, last_used_at = p_now
      WHERE seq = a.seq
      RETURNING * INTO a;
    IF t.task_type = ANY (probe_types) THEN
      UPDATE breakers SET probe_task_id = t.id, updated_at = p_now WHERE task_type = t.task_type;
    END IF;
    v_left := (allow ->> t.task_type)::integer;
    IF v_left IS NOT NULL THEN
      allow := allow || jsonb_build_object(t.task_type, v_left - 1);
      IF v_left - 1 <= 0 THEN
        skip_types := skip_types || t.task_type;
      END IF;
    END IF;
    o_task := to_jsonb(t);
    o_agent := to_jsonb(a);
    o_token := p_tokens[leased];
    o_created := is_new;
    RETURN NEXT;
  END LOOP;
END;
$$;
`,
  },
  {
    version: 3,
    name: 'idle agent pick index; lease v3: linear walk and priority headroom',
    sql: MIGRATION_3,
  },
  {
    version: 4,
    name: 'submit in one round trip',
    sql: SUBMIT_V1,
  },
  {
    version: 5,
    name: 'submit: bounded admission counts',
    sql: SUBMIT_V1_BOUNDED_COUNTS,
  },
  {
    version: 6,
    name: 'lease: agents counted once per call',
    sql: LEASE_V3_COUNTING_ONCE,
  },
  {
    version: 7,
    name: 'queued tasks counted by triggers',
    sql: QUEUED_COUNT,
  },
];
