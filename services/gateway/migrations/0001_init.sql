-- The gateway's schema: each workspace's tool registry.
CREATE TABLE tools (
    workspace_id uuid NOT NULL,
    name         text NOT NULL,
    spec         jsonb NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, name)
);
