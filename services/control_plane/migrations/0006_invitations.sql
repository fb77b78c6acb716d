-- Consent to join a workspace (invitations), and which API keys speak for their user.

-- A personal key is one its user holds alone: made together with its workspace (the
-- bootstrap), returned by an accepted invitation, or made with another personal key for the
-- same user. Every other key was made by an owner for someone and is delegated: it acts in
-- its workspace only, never for its user beyond it (no profile change, no other workspace).
ALTER TABLE api_keys ADD COLUMN personal boolean NOT NULL DEFAULT false;
-- Keys made before this migration are delegated, except each workspace's first key: the one
-- made in the same transaction as the workspace (so with its create_time) for its first user.
UPDATE api_keys k SET personal = true
FROM workspaces w
WHERE w.id = k.workspace_id AND k.create_time = w.create_time;

-- An invitation lets whoever accepts it (with a personal key) join the workspace with its
-- role. Its token is shown once, when it is made; only the token's SHA-256 is kept. Accepting
-- or revoking an invitation deletes it, so a token works once.
CREATE TABLE invitations (
    id           uuid PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    role         text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    display_name text NOT NULL,
    token_sha256 bytea NOT NULL UNIQUE,
    created_by   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    create_time  timestamptz NOT NULL DEFAULT now(),
    expire_time  timestamptz NOT NULL
);
CREATE INDEX invitations_workspace_recent ON invitations (workspace_id, create_time DESC, id DESC);
