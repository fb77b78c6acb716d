-- Durable runs: queued-behind runs, per-session event cursor, run timeouts, lease scans.

-- A run enqueued behind another run of its session waits in 'waiting' (shown as QUEUED);
-- 'queued' stays the state of a session's one claimable run, so the partial unique index
-- runs_one_active_per_session still makes two active runs per session impossible.
ALTER TABLE runs DROP CONSTRAINT runs_state_check;
ALTER TABLE runs ADD CONSTRAINT runs_state_check
    CHECK (state IN ('waiting', 'queued', 'running', 'completed', 'failed', 'cancelled'));
CREATE INDEX runs_waiting ON runs (session_id, create_time) WHERE state = 'waiting';
-- Every replica scans for expired leases; this keeps the scan off the whole table.
CREATE INDEX runs_lease_expiry ON runs (lease_expire_time) WHERE state = 'running';

ALTER TABLE sessions ADD COLUMN run_timeout_seconds double precision;
-- The session-level event cursor: every event of every run of the session gets the next one.
ALTER TABLE sessions ADD COLUMN last_event_sequence bigint NOT NULL DEFAULT 0;

ALTER TABLE run_events ADD COLUMN session_id uuid;
ALTER TABLE run_events ADD COLUMN session_sequence bigint;
UPDATE run_events e SET session_id = r.session_id FROM runs r WHERE r.id = e.run_id;
WITH numbered AS (
    SELECT run_id, sequence,
           row_number() OVER (PARTITION BY session_id
                              ORDER BY create_time, run_id, sequence) AS position
    FROM run_events)
UPDATE run_events e SET session_sequence = n.position
FROM numbered n WHERE n.run_id = e.run_id AND n.sequence = e.sequence;
UPDATE sessions s SET last_event_sequence = coalesce(
    (SELECT max(session_sequence) FROM run_events e WHERE e.session_id = s.id), 0);
ALTER TABLE run_events ALTER COLUMN session_id SET NOT NULL;
ALTER TABLE run_events ALTER COLUMN session_sequence SET NOT NULL;
CREATE UNIQUE INDEX run_events_session_sequence ON run_events (session_id, session_sequence);
