-- Leases: one owner per ingestion stream and per projection, across any number of
-- 'cdcflow run' processes sharing a serving database. The token grows on every change
-- of owner; a commit checks owner and token in its own transaction (fencing).

-- name: acquire
-- Take the lease if it is free or expired, or renew it if we hold it. Returns our token,
-- or no row when someone else holds it. The expiry is computed when the row is updated,
-- not from excluded (the VALUES row is built before a wait for the row lock: a takeover
-- that waited behind a frozen owner's commit would get a lease that had already run out).
INSERT INTO ctl_leases AS l (resource, owner, token, expires_at)
VALUES (%(resource)s, %(owner)s, 1, clock_timestamp() + make_interval(secs => %(ttl)s))
ON CONFLICT (resource) DO UPDATE
SET owner = excluded.owner,
    token = CASE WHEN l.owner = excluded.owner AND l.expires_at > clock_timestamp() THEN l.token ELSE l.token + 1 END,
    expires_at = clock_timestamp() + make_interval(secs => %(ttl)s),
    acquired_at = CASE WHEN l.owner = excluded.owner AND l.expires_at > clock_timestamp()
                       THEN l.acquired_at ELSE clock_timestamp() END,
    renewed_at = clock_timestamp()
WHERE l.owner = excluded.owner OR l.expires_at <= clock_timestamp()
RETURNING token;

-- name: fence
-- Inside a commit's transaction: still ours, same token, not expired? Locks the row so a
-- takeover waits for this commit to finish.
SELECT 1 FROM ctl_leases
WHERE resource = %(resource)s AND owner = %(owner)s AND token = %(token)s AND expires_at > clock_timestamp()
FOR SHARE;

-- name: release
-- Give the lease up on a clean stop, so another process takes over at once.
UPDATE ctl_leases SET expires_at = clock_timestamp() - interval '1 second'
WHERE resource = %(resource)s AND owner = %(owner)s;

-- name: list_leases
-- Who owns what (for status).
SELECT resource, owner, token, expires_at, acquired_at, renewed_at, expires_at > clock_timestamp() AS live
FROM ctl_leases ORDER BY resource;

-- name: holder
-- Who holds the lease now (to see whether it is a dead process on this host).
SELECT owner FROM ctl_leases WHERE resource = %(resource)s AND expires_at > clock_timestamp();

-- name: expire_owner
-- The holder is a process of this host that no longer exists: its lease ends now.
UPDATE ctl_leases SET expires_at = clock_timestamp() WHERE resource = %(resource)s AND owner = %(owner)s;
