-- Tenancy administration: list a workspace's keys newest first, a user's workspaces.

CREATE INDEX api_keys_workspace_recent ON api_keys (workspace_id, create_time DESC, id DESC)
    WHERE revoke_time IS NULL;
CREATE INDEX memberships_user ON memberships (user_id);
