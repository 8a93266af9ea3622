-- Event ids a consumer has applied (see svc_inbox_apply() in svc.h): the
-- id is inserted in the same transaction as the state change, so an event
-- delivered again finds its id here and changes nothing.
CREATE TABLE inbox (
  event_id    uuid PRIMARY KEY,
  topic       text NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now()
);
