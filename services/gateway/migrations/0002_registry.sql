-- The tool registry, MCP servers and the audit of every call.
-- 0001's placeholder table never held rows (the gateway served UNIMPLEMENTED).
DROP TABLE tools;

CREATE TABLE mcp_servers (
    workspace_id uuid NOT NULL,
    id           text NOT NULL,
    url          text NOT NULL,
    timeout_ms   integer NOT NULL DEFAULT 0,
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, id)
);

-- HTTP tools, and the tools discovered on MCP servers (mcp_server set, remote_name the
-- tool's name on that server). One namespace per workspace: the name the model sees.
CREATE TABLE tools (
    workspace_id         uuid NOT NULL,
    name                 text NOT NULL CHECK (name ~ '^[a-zA-Z0-9_-]{1,64}$'),
    description          text NOT NULL DEFAULT '',
    parameters           jsonb NOT NULL,
    method               text NOT NULL DEFAULT '',
    url_template         text NOT NULL DEFAULT '',
    credential           text NOT NULL DEFAULT '',
    credential_injection text NOT NULL DEFAULT '',
    timeout_ms           integer NOT NULL DEFAULT 0,
    mcp_server           text,
    remote_name          text,
    create_time          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, name),
    FOREIGN KEY (workspace_id, mcp_server) REFERENCES mcp_servers ON DELETE CASCADE
);

-- One row per call: metadata only, never argument values, results or secrets.
CREATE TABLE call_audit (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id    uuid NOT NULL,
    run             text NOT NULL,
    call_id         text NOT NULL,
    tool            text NOT NULL,
    kind            text NOT NULL,           -- 'http', 'mcp' or '' (unknown tool)
    argument_shape  jsonb NOT NULL,          -- top-level keys and JSON types
    credential      text NOT NULL DEFAULT '',-- the reference, never the value
    destination     text NOT NULL DEFAULT '',-- host:port as configured
    outcome         text NOT NULL,           -- 'ok' or the error code
    http_status     integer,
    response_bytes  bigint NOT NULL DEFAULT 0,
    truncated       boolean NOT NULL DEFAULT false,
    detail          text NOT NULL DEFAULT '',-- e.g. which address the SSRF guard refused
    duration_ms     integer NOT NULL,
    create_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX call_audit_by_workspace ON call_audit (workspace_id, create_time);
