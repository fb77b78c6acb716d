-- Usage and budgets: what each run consumed, its rollups, and monthly limits per workspace.

-- A run's usage so far, kept on its row while it runs: each stored `usage` event carries the
-- run's totals (a new attempt starts from the totals of the attempts before it, which the
-- claim hands the worker), so the row always holds the latest. None of these columns is
-- indexed, so the updates stay HOT.
ALTER TABLE runs ADD COLUMN api_key_id uuid;
ALTER TABLE runs ADD COLUMN model text NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN cached_input_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN cost_micros bigint NOT NULL DEFAULT 0;
-- When the run's first output (text or reasoning) was stored: time to first token.
ALTER TABLE runs ADD COLUMN first_output_time timestamptz;
-- How long the worker waited on the model, summed over the run's model calls.
ALTER TABLE runs ADD COLUMN model_latency_ms bigint NOT NULL DEFAULT 0;

-- One row per ended run, written by the statement that ends it, and never changed: the
-- source of every usage rollup. It outlives the run (no foreign key), so deleting a session
-- does not rewrite what the workspace spent.
CREATE TABLE run_usage (
    run_id                   uuid PRIMARY KEY,
    workspace_id             uuid NOT NULL,
    session_id               uuid NOT NULL,
    api_key_id               uuid,
    model                    text NOT NULL,
    state                    text NOT NULL,
    input_tokens             bigint NOT NULL,
    output_tokens            bigint NOT NULL,
    reasoning_tokens         bigint NOT NULL,
    cached_input_tokens      bigint NOT NULL,
    cost_micros              bigint NOT NULL,
    time_to_first_token_ms   bigint,
    model_latency_ms         bigint NOT NULL,
    duration_ms              bigint NOT NULL,
    create_time              timestamptz NOT NULL,
    end_time                 timestamptz NOT NULL
);
CREATE INDEX run_usage_workspace_time ON run_usage (workspace_id, end_time);

-- Month-to-date totals for budget checks, so CreateRun reads a few rows instead of summing
-- a month of runs. A run's usage is added when it ends, to the month it ends in (UTC). The
-- shard (from the run's id) spreads one key's concurrent finishes over eight rows, so they
-- do not all queue on one row lock.
CREATE TABLE usage_monthly (
    workspace_id uuid NOT NULL,
    month        date NOT NULL,
    api_key_id   uuid NOT NULL,
    shard        smallint NOT NULL,
    tokens       bigint NOT NULL,
    cost_micros  bigint NOT NULL,
    PRIMARY KEY (workspace_id, month, api_key_id, shard)
);

-- Monthly limits; NULL means none. Tokens count input plus output.
ALTER TABLE workspaces ADD COLUMN budget_monthly_tokens bigint;
ALTER TABLE workspaces ADD COLUMN budget_monthly_cost_micros bigint;
