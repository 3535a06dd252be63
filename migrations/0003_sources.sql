-- Forge sources: the Atlassian apps whose logs a resource pulls (SPEC §3).

CREATE TABLE sources (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    resource_id           uuid NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    app_id                text NOT NULL,
    environment_id        text NOT NULL,
    email                 text NOT NULL,
    -- Fernet token (broker.vault); never returned, erased at deprovision.
    api_token_enc         text,
    -- Empty means every level / every installation.
    levels                text[] NOT NULL DEFAULT '{}',
    installation_contexts text[] NOT NULL DEFAULT '{}',
    -- How the output names the source (service.name, deployment environment).
    service_name          text,
    environment_label     text,
    -- Forge's `arguments` attribute can carry user data: dropped unless opted in.
    include_arguments     boolean NOT NULL DEFAULT false,
    state                 text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused')),
    pause_reason          text CHECK (pause_reason IN ('auth_failed', 'not_found', 'bad_request')),
    last_error            text,
    verified_at           timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    -- One source per app environment and resource: a second one would only
    -- deliver every record twice.
    UNIQUE (resource_id, app_id, environment_id)
);

CREATE INDEX sources_app_idx ON sources (app_id);
