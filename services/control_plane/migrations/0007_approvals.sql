-- Human approval of tool calls: runs wait in 'requires_action' with no lease while people
-- decide; each pending call is a row of tool_approvals.

ALTER TABLE runs DROP CONSTRAINT runs_state_check;
ALTER TABLE runs ADD CONSTRAINT runs_state_check
    CHECK (state IN ('waiting', 'queued', 'running', 'requires_action', 'completed', 'failed',
                     'cancelled'));
-- A run waiting for approval is still the session's active run.
DROP INDEX runs_one_active_per_session;
CREATE UNIQUE INDEX runs_one_active_per_session ON runs (session_id)
    WHERE state IN ('queued', 'running', 'requires_action');

-- Set when the run first waits: its claims then carry its events so the worker resumes.
ALTER TABLE runs ADD COLUMN awaited_approval boolean NOT NULL DEFAULT false;
-- True between the re-queue after approvals and the next claim: that claim continues the
-- attempt instead of starting a new one.
ALTER TABLE runs ADD COLUMN resume_pending boolean NOT NULL DEFAULT false;
-- Time spent waiting for people does not count against the run's timeout.
ALTER TABLE runs ADD COLUMN suspend_time timestamptz;
ALTER TABLE runs ADD COLUMN waited_seconds double precision NOT NULL DEFAULT 0;
-- Who asked for the cancel (NULL: the platform, e.g. an interrupting run or a deletion).
ALTER TABLE runs ADD COLUMN cancel_requested_by uuid;

ALTER TABLE sessions ADD COLUMN tool_approval_overrides jsonb NOT NULL DEFAULT '{}';

CREATE TABLE tool_approvals (
    run_id         uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    call_id        text NOT NULL,
    session_id     uuid NOT NULL,
    tool           text NOT NULL,
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'cancelled')),
    expire_time    timestamptz NOT NULL,
    decided_by     uuid,
    message        text NOT NULL DEFAULT '',
    request_id     text,
    request_time   timestamptz NOT NULL DEFAULT now(),
    decide_time    timestamptz,
    PRIMARY KEY (run_id, call_id)
);
-- The expiry sweep reads only pending requests.
CREATE INDEX tool_approvals_expiry ON tool_approvals (expire_time) WHERE state = 'pending';
CREATE INDEX tool_approvals_request ON tool_approvals (run_id, request_id)
    WHERE request_id IS NOT NULL;
