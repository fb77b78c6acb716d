-- The vault's schema. Secrets are envelope-encrypted; the master keys never live here.
CREATE TABLE master_key_versions (
    version     integer PRIMARY KEY,
    create_time timestamptz NOT NULL DEFAULT now(),
    retire_time timestamptz
);
