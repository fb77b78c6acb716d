-- Whether a tool's calls need a person's approval. An MCP server's policy is what its
-- discovered tools start with; each tool's own column is what the worker reads.
ALTER TABLE tools ADD COLUMN approval_policy text NOT NULL DEFAULT 'always_allow'
    CHECK (approval_policy IN ('always_allow', 'always_ask', 'never'));
ALTER TABLE mcp_servers ADD COLUMN approval_policy text NOT NULL DEFAULT 'always_allow'
    CHECK (approval_policy IN ('always_allow', 'always_ask', 'never'));
