-- A transaction that publishes its own outbox rows when it commits
-- (svc_pub_quiet, svc_pub_fetch and svc_pub_offer in svc.h) needs no
-- NOTIFY: the scan it would start finds nothing new, and a NOTIFY
-- serializes commits on the notification queue's lock. Such a transaction
-- sets svc.outbox_notify to 'off' for itself (set_config(..., true)) before
-- it writes to the outbox.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF coalesce(current_setting('svc.outbox_notify', true), '') <> 'off' THEN
    PERFORM pg_notify('svc_outbox', '');
  END IF;
  RETURN NULL;
END
$$;
