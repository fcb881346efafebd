-- ActivateSeat for a new device, as pgbench runs it: the statements the server sends
-- today, in its order (app/licensing.py activate_seat, store/activation_repository.py
-- claim_seat, store/event_repository.py flush), inside one transaction. When that SQL
-- changes, change this file; bench/licensing.py loads it by name ("activate_seat").
--
-- Variables (pgbench -D): first and last, the range of seeded entitlements
-- ent_seed_<first> .. ent_seed_<last> (bench/harness/seed.py); each transaction picks
-- one at random (first = last: one hot row). The server's timestamps (now, now minus
-- the 30 s lapse grace) are now() here.
\set n random(:first, :last)
\set device random(1, 9223372036854775806)
BEGIN;
-- _holder: the entitlement of the license key, by its keyed hash
SELECT entitlement_id, product_id, edition_id, customer_id, customer_name, customer_email, ship_to_email, seats, features, start_time, end_time, trial, cancel_time, grace_seconds, usable_until, addon_features, removed_features, license_model, overage, lease_duration_seconds, dispatch, key_hash, key_sealed, order_source, order_id, create_time, update_time
  FROM entitlements WHERE key_hash = 'seedkey' || lpad(CAST(:n AS text), 57, '0') LIMIT 1;
SELECT entitlement_id, external_reference FROM external_references
  WHERE entitlement_id IN ('ent_seed_' || :n) ORDER BY external_reference;
-- claim_seat: lock the entitlement row
SELECT entitlement_id, product_id, edition_id, customer_id, customer_name, customer_email, ship_to_email, seats, features, start_time, end_time, trial, cancel_time, grace_seconds, usable_until, addon_features, removed_features, license_model, overage, lease_duration_seconds, dispatch, key_hash, key_sealed, order_source, order_id, create_time, update_time
  FROM entitlements WHERE entitlement_id = 'ent_seed_' || :n LIMIT 1 FOR UPDATE;
SELECT entitlement_id, external_reference FROM external_references
  WHERE entitlement_id IN ('ent_seed_' || :n) ORDER BY external_reference;
-- note_lapses: floating leases that lapsed unnoticed
SELECT activation_id FROM activations
  WHERE entitlement_id = 'ent_seed_' || :n AND released_time IS NULL
    AND lapse_recorded_time IS NULL AND lease_expire_time <= now() - interval '30 seconds';
-- the device's activation, if it has one
SELECT activation_id, entitlement_id, fingerprint, label, lease_jti, lease_expire_time, create_time, update_time, released_time, seat_time, lapse_recorded_time, user_id
  FROM activations WHERE entitlement_id = 'ent_seed_' || :n AND fingerprint = 'pgbench-device-' || :device;
-- count_live before taking the seat
SELECT count(*) FROM activations
  WHERE entitlement_id = 'ent_seed_' || :n AND activation_id != ''
    AND released_time IS NULL AND lease_expire_time > now() - interval '30 seconds';
-- _write: the new activation
INSERT INTO activations (activation_id, entitlement_id, fingerprint, label, lease_jti, lease_expire_time, create_time, update_time, seat_time, user_id)
  VALUES ('act_pgb_' || :client_id || '_' || :device, 'ent_seed_' || :n, 'pgbench-device-' || :device, 'bench device', 'lease_pgb_' || :device, now() + interval '3600 seconds', now(), now(), now(), NULL);
-- count_live after, for the lease and the event
SELECT count(*) FROM activations
  WHERE entitlement_id = 'ent_seed_' || :n AND activation_id != ''
    AND released_time IS NULL AND lease_expire_time > now() - interval '30 seconds';
-- signing_kid: the key that signs the lease
SELECT kid FROM signing_keys WHERE retire_time IS NULL ORDER BY create_time DESC, kid DESC LIMIT 1;
-- flush: number the event under the event_sequence row lock, then write it
UPDATE event_sequence SET last_sequence = last_sequence + 1 WHERE id = 1 RETURNING last_sequence \gset
INSERT INTO entitlement_events (sequence, entitlement_id, type, create_time, order_source, order_id, activation_id, snapshot)
  VALUES (:last_sequence, 'ent_seed_' || :n, 'seat_activated', now(), '', '', 'act_pgb_' || :client_id || '_' || :device,
          '{"edition_id": "standard", "seats": 10000, "seats_in_use": 1, "features": {"export-pdf": null, "projects": 10}, "start_time": "2026-01-01T00:00:00.000000+00:00", "end_time": "2027-01-01T00:00:00.000000+00:00", "cancel_time": null, "trial": false, "status": "active", "external_references": [], "update_time": "2026-01-01T00:00:00.000000+00:00"}');
COMMIT;
