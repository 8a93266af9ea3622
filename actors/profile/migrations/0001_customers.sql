-- Customers and their credentials. Emails are stored lower-cased (the
-- service normalises them), so the unique constraint is case-insensitive.
CREATE TABLE customers (
  id            uuid PRIMARY KEY,
  name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  email         text NOT NULL CHECK (length(email) BETWEEN 3 AND 254 AND email = lower(email)),
  phone         text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
  password_hash text NOT NULL,
  status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked', 'closed')),
  roles         text[] NOT NULL DEFAULT '{customer}',
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT customers_email_key UNIQUE (email)
);
