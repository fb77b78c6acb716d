-- Bumped whenever the control plane changes a workspace's tool registry (it is the only
-- admin path to the gateway), so workers can reuse a workspace's tool list until it changes.
ALTER TABLE workspaces ADD COLUMN tools_version bigint NOT NULL DEFAULT 0;
