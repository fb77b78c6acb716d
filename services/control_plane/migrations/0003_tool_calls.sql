-- Tool call records: one row per call the worker reports through its tool_call.* events,
-- written in the transaction that stores those events (dispatch.py).
CREATE TABLE tool_calls (
    run_id         uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt        integer NOT NULL,
    call_id        text NOT NULL,
    session_id     uuid NOT NULL,
    tool           text NOT NULL,
    arguments_json text NOT NULL,
    state          text NOT NULL DEFAULT 'running'
                   CHECK (state IN ('running', 'succeeded', 'failed')),
    result         text NOT NULL DEFAULT '',
    error_code     text NOT NULL DEFAULT '',
    truncated      boolean NOT NULL DEFAULT false,
    start_sequence bigint NOT NULL,
    start_time     timestamptz NOT NULL,
    end_time       timestamptz,
    duration_ms    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, attempt, call_id)
);
CREATE INDEX tool_calls_by_run ON tool_calls (run_id, start_sequence);
