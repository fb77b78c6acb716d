-- The control plane's schema: tenancy, API keys, sessions, transcripts, runs (also the run
-- queue) and their events.

CREATE TABLE workspaces (
    id           uuid PRIMARY KEY,
    display_name text NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id          uuid PRIMARY KEY,
    create_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE profiles (
    user_id      uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    display_name text NOT NULL,
    update_time  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role         text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, user_id)
);

CREATE TABLE api_keys (
    id             uuid PRIMARY KEY,
    workspace_id   uuid NOT NULL,
    user_id        uuid NOT NULL,
    name           text NOT NULL,
    -- The public part of the key, used to find the row; the secret part is stored hashed.
    prefix         text NOT NULL UNIQUE,
    secret_sha256  bytea NOT NULL,
    create_time    timestamptz NOT NULL DEFAULT now(),
    last_used_time timestamptz,
    revoke_time    timestamptz,
    FOREIGN KEY (workspace_id, user_id) REFERENCES memberships (workspace_id, user_id)
        ON DELETE CASCADE
);

CREATE TABLE sessions (
    id           uuid PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    created_by   uuid NOT NULL REFERENCES users (id),
    title        text NOT NULL DEFAULT '',
    instructions text NOT NULL DEFAULT '',
    metadata     jsonb NOT NULL DEFAULT '{}',
    model        text NOT NULL,
    request_id   text,
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, request_id)
);
CREATE INDEX sessions_workspace_recent ON sessions (workspace_id, create_time DESC, id DESC);

-- The transcript: every session's messages in the order they were stored.
CREATE TABLE messages (
    id              uuid PRIMARY KEY,
    session_id      uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    position        bigint GENERATED ALWAYS AS IDENTITY,
    role            text NOT NULL CHECK (role IN ('user', 'assistant')),
    text            text NOT NULL,
    run_id          uuid,
    author_user_id  uuid,
    create_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_session_position ON messages (session_id, position);

-- Runs are also the queue: workers claim queued rows with FOR UPDATE SKIP LOCKED.
CREATE TABLE runs (
    id                  uuid PRIMARY KEY,
    session_id          uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    workspace_id        uuid NOT NULL,
    created_by          uuid NOT NULL,
    input_message_id    uuid NOT NULL,
    output_message_id   uuid,
    state               text NOT NULL
        CHECK (state IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    attempt             integer NOT NULL DEFAULT 0,
    fencing_token       bigint NOT NULL DEFAULT 0,
    lease_owner         text,
    lease_expire_time   timestamptz,
    last_event_sequence bigint NOT NULL DEFAULT 0,
    cancel_requested    boolean NOT NULL DEFAULT false,
    error_reason        text,
    error_message       text,
    input_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    reasoning_tokens    bigint NOT NULL DEFAULT 0,
    request_id          text,
    create_time         timestamptz NOT NULL DEFAULT now(),
    start_time          timestamptz,
    end_time            timestamptz,
    UNIQUE (workspace_id, request_id)
) WITH (fillfactor = 70);  -- room for HOT updates: a run row changes several times
CREATE INDEX runs_session_recent ON runs (session_id, create_time DESC, id DESC);
CREATE INDEX runs_queued ON runs (create_time) WHERE state = 'queued';
-- A session runs one run at a time; this index makes two concurrent creates unable to both win.
CREATE UNIQUE INDEX runs_one_active_per_session ON runs (session_id)
    WHERE state IN ('queued', 'running');

-- The durable, gapless timeline of each run: sequence 1, 2, 3… per run.
CREATE TABLE run_events (
    run_id      uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    sequence    bigint NOT NULL,
    type        text NOT NULL,
    attempt     integer NOT NULL,
    -- The serialized agentplatform.v1.RunEvent (without its name and time).
    body        bytea NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, sequence)
);
