-- Envelope-encrypted secrets and the audit log. Rows hold ciphertext and wrapped data keys
-- only; the master keys that unwrap them live in the vault's key file.

-- Identifies each master-key version's key material without revealing it, so a key file
-- holding a different key under a known version is refused at start-up.
ALTER TABLE master_key_versions ADD COLUMN key_check bytea;

CREATE TABLE secrets (
    id           uuid PRIMARY KEY,
    workspace_id uuid NOT NULL,
    -- Byte order, so listing pages by name is the same order everywhere.
    name         text COLLATE "C" NOT NULL,
    -- The newest version; versions count from 1.
    version      bigint NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, name)
);

-- One row per version. No foreign key to master_key_versions: a row naming a version the
-- vault does not know must still be readable, so that it fails as MASTER_KEY_UNAVAILABLE.
CREATE TABLE secret_versions (
    secret_id          uuid NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    version            bigint NOT NULL,
    format             smallint NOT NULL,
    nonce              bytea NOT NULL,
    ciphertext         bytea NOT NULL,
    wrapped_key        bytea NOT NULL,
    master_key_version integer NOT NULL,
    request_id         text,
    created_by         uuid,
    create_time        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (secret_id, version),
    UNIQUE (secret_id, request_id)
);

-- "How many data keys does each master-key version still wrap" and the re-wrap's scan.
CREATE INDEX secret_versions_master_key_version ON secret_versions (master_key_version);

-- Append-only. Never holds a value; operations: put, delete, resolve, rotate, rewrap, retire.
CREATE TABLE audit_log (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time               timestamptz NOT NULL DEFAULT now(),
    operation          text NOT NULL,
    outcome            text NOT NULL,
    reason             text,
    actor_service      text NOT NULL,
    actor_user         uuid,
    workspace_id       uuid,
    secret_uid         uuid,
    secret_name        text,
    version            bigint,
    master_key_version integer,
    run                text,
    request_id         text,
    detail             jsonb
);

CREATE INDEX audit_log_workspace ON audit_log (workspace_id, id);
