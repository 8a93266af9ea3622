-- A transaction that publishes its own outbox rows when it commits (the
-- relay's svc_relay_quiet and svc_relay_offer) needs no NOTIFY: the scan it
-- would start finds nothing new, and a NOTIFY serializes commits on the
-- notification queue's lock. Such a transaction sets svc.outbox_notify to
-- 'off' for itself (set_config(..., true)) before it writes to the outbox.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF coalesce(current_setting('svc.outbox_notify', true), '') <> 'off' THEN
    PERFORM pg_notify('svc_outbox', '');
  END IF;
  RETURN NULL;
END
$$;
