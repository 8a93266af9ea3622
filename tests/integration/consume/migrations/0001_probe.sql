-- The probe's state machine (tests only): one row per payment id, and one
-- effect row per transition it made, so a test can count effects.
CREATE TABLE probe_items (
  id    text PRIMARY KEY,
  state text NOT NULL CHECK (state IN ('requested', 'cancelled'))
);

CREATE TABLE probe_effects (
  item     text NOT NULL,
  event_id uuid NOT NULL,
  kind     text NOT NULL
);
