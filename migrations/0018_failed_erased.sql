-- Resources whose provisioning failed before 0016 still held their secrets until
-- their purge 30 days on; erase them now, as broker.resources.provision_failed
-- and retire_children do for every failure since (issue 14, item 3).
UPDATE resources SET log_drain_token = NULL,
    oauth_grant_code_enc = NULL, oauth_grant_expires_at = NULL,
    oauth_access_token_enc = NULL, oauth_refresh_token_enc = NULL, oauth_expires_at = NULL
WHERE state = 'failed';
UPDATE drains SET enabled = false, url_enc = NULL, headers_enc = NULL, updated_at = now()
WHERE resource_id IN (SELECT id FROM resources WHERE state = 'failed')
  AND (enabled OR url_enc IS NOT NULL OR headers_enc IS NOT NULL);
UPDATE sources SET api_token_enc = NULL, state = 'paused', updated_at = now()
WHERE resource_id IN (SELECT id FROM resources WHERE state = 'failed')
  AND (api_token_enc IS NOT NULL OR state <> 'paused');

-- 0016 built a second copy of 0002's resources_deprovisioned_idx.
DROP INDEX IF EXISTS resources_deprovisioned_at_idx;
