-- rlm_cap schema for MariaDB 10.5+ / MySQL 8.0+ (InnoDB, utf8mb4).
--
-- Canonical DDL for DBAs. rlm_cap/store.py holds the same tables as SQLAlchemy
-- metadata; tests/test_schema.py loads this file into MariaDB, reflects it and
-- compares, so the two cannot drift. Sizes are BIGINT UNSIGNED bytes, money is
-- DECIMAL, times are DATETIME(6) in UTC. RADIUS strings (User-Name,
-- Acct-Session-Id, NAS) use utf8mb4_nopad_bin: compared and stored exactly (trailing spaces too).
--
--   mariadb rlm_cap < schema.sql      (or: capctl --db mysql+pymysql://... db init)

-- RADIUS clients, compatible with FreeRADIUS's own `nas` table (rlm_sql
-- read_clients), plus where and how to send CoA/Disconnect.
CREATE TABLE nas (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  nasname VARCHAR(128) NOT NULL,
  shortname VARCHAR(32) NULL,
  type VARCHAR(30) NULL DEFAULT 'other',
  ports INT NULL,
  secret VARCHAR(60) NOT NULL DEFAULT 'secret',
  server VARCHAR(64) NULL,
  community VARCHAR(50) NULL,
  description VARCHAR(200) NULL DEFAULT 'RADIUS Client',
  coa_port INT UNSIGNED NOT NULL DEFAULT 3799,
  PRIMARY KEY (id),
  KEY ix_nas_nasname (nasname)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE partners (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  name VARCHAR(100) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_partners_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE customers (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  name VARCHAR(200) NOT NULL,
  email VARCHAR(254) NULL,
  phone VARCHAR(32) NULL,
  partner_id INT UNSIGNED NULL,
  balance DECIMAL(14,2) NOT NULL DEFAULT 0,
  auto_topup BOOL NOT NULL DEFAULT 0,
  billing_day TINYINT UNSIGNED NULL,
  created_at DATETIME(6) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_customers_name (name),
  KEY ix_customers_partner_id (partner_id),
  CONSTRAINT fk_customers_partner FOREIGN KEY (partner_id) REFERENCES partners (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE plans (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  name VARCHAR(100) NOT NULL,
  monthly_limit BIGINT UNSIGNED NULL,            -- NULL: no CAP
  direction VARCHAR(8) NOT NULL DEFAULT 'up+down',
  action VARCHAR(8) NOT NULL DEFAULT 'block',    -- block | fixed | reduce
  fixed_rate VARCHAR(64) NULL,                   -- Mikrotik-Rate-Limit when action = fixed
  reduce_percent TINYINT UNSIGNED NOT NULL DEFAULT 0,
  normal_rate VARCHAR(64) NULL,                  -- the plan's speed; restore and reduce use it
  bonus_limit BIGINT UNSIGNED NOT NULL DEFAULT 0,
  bonus_unlimited BOOL NOT NULL DEFAULT 0,
  bonus_after_cap BOOL NOT NULL DEFAULT 0,
  rollover BOOL NOT NULL DEFAULT 0,
  auto_topup_plan_id INT UNSIGNED NULL,
  auto_topup_trigger_percent TINYINT UNSIGNED NOT NULL DEFAULT 0,
  compensate BOOL NOT NULL DEFAULT 0,
  overuse_price_per_gb DECIMAL(14,4) NOT NULL DEFAULT 0,
  PRIMARY KEY (id),
  UNIQUE KEY uq_plans_name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE plan_time_frames (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  plan_id INT UNSIGNED NOT NULL,
  start_time TIME NOT NULL,
  end_time TIME NOT NULL,                        -- <= start_time: crosses midnight
  days VARCHAR(32) NOT NULL DEFAULT 'all',       -- 'all' or e.g. 'sat,sun'
  PRIMARY KEY (id),
  KEY ix_plan_time_frames_plan_id (plan_id),
  CONSTRAINT fk_plan_time_frames_plan FOREIGN KEY (plan_id) REFERENCES plans (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE topup_plans (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  plan_id INT UNSIGNED NOT NULL,
  name VARCHAR(100) NOT NULL,
  size BIGINT UNSIGNED NOT NULL,
  price DECIMAL(14,2) NOT NULL,
  valid_months SMALLINT UNSIGNED NULL,           -- NULL: never expires
  category VARCHAR(64) NOT NULL DEFAULT 'Top-up',
  add_to_invoice BOOL NOT NULL DEFAULT 0,
  PRIMARY KEY (id),
  UNIQUE KEY uq_topup_plans_plan_name (plan_id, name),
  CONSTRAINT fk_topup_plans_plan FOREIGN KEY (plan_id) REFERENCES plans (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE notification_rules (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  plan_id INT UNSIGNED NOT NULL,
  source VARCHAR(20) NOT NULL,                   -- monthly | total | topup | topup_action | auto_topup_action
  threshold_percent TINYINT UNSIGNED NOT NULL DEFAULT 0,
  channel VARCHAR(8) NOT NULL DEFAULT 'email',   -- email | sms | both
  subject VARCHAR(200) NOT NULL DEFAULT '',
  body TEXT NOT NULL,
  PRIMARY KEY (id),
  KEY ix_notification_rules_plan_id (plan_id),
  CONSTRAINT fk_notification_rules_plan FOREIGN KEY (plan_id) REFERENCES plans (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- One subscriber's CAP service, found by its RADIUS User-Name.
CREATE TABLE services (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  customer_id INT UNSIGNED NOT NULL,
  plan_id INT UNSIGNED NOT NULL,
  username VARCHAR(253) COLLATE utf8mb4_nopad_bin NOT NULL,
  description VARCHAR(200) NOT NULL DEFAULT '',
  status VARCHAR(16) NOT NULL DEFAULT 'active',   -- active | replaced
  cap_state VARCHAR(16) NOT NULL DEFAULT 'ok',    -- ok | capped | unlimited
  state_changed_at DATETIME(6) NULL,
  created_at DATETIME(6) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_services_username (username),
  KEY ix_services_customer_id (customer_id),
  KEY ix_services_plan_id (plan_id),
  CONSTRAINT fk_services_customer FOREIGN KEY (customer_id) REFERENCES customers (id),
  CONSTRAINT fk_services_plan FOREIGN KEY (plan_id) REFERENCES plans (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Per NAS session: the last totals the NAS reported (SPEC "Accounting semantics").
CREATE TABLE sessions (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  nas VARCHAR(253) COLLATE utf8mb4_nopad_bin NOT NULL,             -- NAS-IP-Address or NAS-Identifier
  acct_session_id VARCHAR(253) COLLATE utf8mb4_nopad_bin NOT NULL,
  username VARCHAR(253) COLLATE utf8mb4_nopad_bin NOT NULL,
  service_id INT UNSIGNED NULL,
  input_total BIGINT UNSIGNED NOT NULL DEFAULT 0,            -- upload, Gigawords included
  output_total BIGINT UNSIGNED NOT NULL DEFAULT 0,           -- download
  counter_time INT UNSIGNED NULL,                            -- Acct-Session-Time of those totals
  last_time DATETIME(6) NOT NULL,
  started_at DATETIME(6) NOT NULL,
  closed VARCHAR(16) NULL,                                   -- NULL open | stop | nas-restart
  framed_ip VARCHAR(45) NULL,
  nas_ip VARCHAR(45) NULL,
  PRIMARY KEY (id),
  KEY ix_sessions_key (nas, acct_session_id, username),
  KEY ix_sessions_service_closed (service_id, closed),
  KEY ix_sessions_nas_closed (nas, closed),
  CONSTRAINT fk_sessions_service FOREIGN KEY (service_id) REFERENCES services (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Usage of one service in one billing period.
CREATE TABLE periods (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  service_id INT UNSIGNED NOT NULL,
  period_start DATETIME(6) NOT NULL,
  period_end DATETIME(6) NOT NULL,
  upload_bytes BIGINT UNSIGNED NOT NULL DEFAULT 0,
  download_bytes BIGINT UNSIGNED NOT NULL DEFAULT 0,
  counted_bytes BIGINT UNSIGNED NOT NULL DEFAULT 0,          -- in the plan's direction
  bonus_bytes BIGINT UNSIGNED NOT NULL DEFAULT 0,            -- inside bonus time frames
  free_bytes BIGINT UNSIGNED NOT NULL DEFAULT 0,             -- against no limit (unlimited plan or frame)
  overuse_bytes BIGINT UNSIGNED NOT NULL DEFAULT 0,          -- past the CAP, in no bucket
  pending_overuse_bytes BIGINT UNSIGNED NOT NULL DEFAULT 0,  -- of which: before the CAP action (auto top-up may take it)
  PRIMARY KEY (id),
  UNIQUE KEY uq_periods_service_start (service_id, period_start),
  CONSTRAINT fk_periods_service FOREIGN KEY (service_id) REFERENCES services (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Data a service may use: monthly limit, rollover, top-ups, bonus, transfer, compensation.
CREATE TABLE buckets (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  service_id INT UNSIGNED NOT NULL,
  kind VARCHAR(16) NOT NULL,
  size BIGINT UNSIGNED NOT NULL,
  used BIGINT UNSIGNED NOT NULL DEFAULT 0,
  valid_from DATETIME(6) NOT NULL,
  valid_until DATETIME(6) NULL,                              -- NULL: until used
  period_start DATETIME(6) NULL,                             -- set for the buckets a period opens
  origin VARCHAR(16) NOT NULL,                               -- plan | admin | auto | portal | system
  topup_plan_id INT UNSIGNED NULL,
  created_at DATETIME(6) NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_buckets_period (service_id, kind, period_start),
  KEY ix_buckets_service_valid (service_id, valid_until),
  CONSTRAINT fk_buckets_service FOREIGN KEY (service_id) REFERENCES services (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Append-only: every change of available data, every action and notification.
CREATE TABLE history (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  service_id INT UNSIGNED NOT NULL,
  at DATETIME(6) NOT NULL,
  kind VARCHAR(24) NOT NULL,
  size BIGINT NULL,                                          -- bytes added (negative: removed)
  amount DECIMAL(14,2) NULL,
  bucket_id BIGINT UNSIGNED NULL,
  actor VARCHAR(64) NOT NULL,                                -- operator name, portal, system
  detail VARCHAR(500) NOT NULL DEFAULT '',
  PRIMARY KEY (id),
  KEY ix_history_service_at (service_id, at),
  KEY ix_history_bucket_kind (bucket_id, kind)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Settings by scope: global (scope_id 0), partner, plan, customer, service.
CREATE TABLE settings (
  scope VARCHAR(16) NOT NULL,
  scope_id INT UNSIGNED NOT NULL,
  name VARCHAR(64) NOT NULL,
  value VARCHAR(1000) NOT NULL,
  PRIMARY KEY (scope, scope_id, name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Money on the customer's account: payments (+) and charges (-).
CREATE TABLE transactions (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  customer_id INT UNSIGNED NOT NULL,
  service_id INT UNSIGNED NULL,
  at DATETIME(6) NOT NULL,
  amount DECIMAL(14,2) NOT NULL,
  category VARCHAR(64) NOT NULL,
  description VARCHAR(500) NOT NULL,
  PRIMARY KEY (id),
  KEY ix_transactions_customer_at (customer_id, at),
  CONSTRAINT fk_transactions_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Charges waiting for the customer's next invoice ("add to invoice").
CREATE TABLE invoice_items (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  customer_id INT UNSIGNED NOT NULL,
  service_id INT UNSIGNED NULL,
  at DATETIME(6) NOT NULL,
  amount DECIMAL(14,2) NOT NULL,
  category VARCHAR(64) NOT NULL,
  description VARCHAR(500) NOT NULL,
  invoiced_at DATETIME(6) NULL,
  PRIMARY KEY (id),
  KEY ix_invoice_items_customer (customer_id, invoiced_at),
  CONSTRAINT fk_invoice_items_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The outbox: what the module and capctl decided, for the enforcer to do
-- (CoA, Disconnect, auto top-up, notification). dedupe_key makes "once" hold.
CREATE TABLE actions (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  service_id INT UNSIGNED NOT NULL,
  kind VARCHAR(20) NOT NULL,                     -- block | fixed | reduce | restore | auto_topup | compensate | notify
  rate VARCHAR(64) NULL,
  size BIGINT UNSIGNED NOT NULL DEFAULT 0,
  rule_id INT UNSIGNED NULL,
  dedupe_key VARCHAR(191) NULL,
  status VARCHAR(12) NOT NULL DEFAULT 'pending', -- pending | done | failed
  attempts SMALLINT UNSIGNED NOT NULL DEFAULT 0,
  due_at DATETIME(6) NOT NULL,
  lease_until DATETIME(6) NULL,
  claimed_by VARCHAR(64) NULL,
  result VARCHAR(500) NULL,
  created_at DATETIME(6) NOT NULL,
  finished_at DATETIME(6) NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_actions_dedupe_key (dedupe_key),
  KEY ix_actions_status_due (status, due_at),
  KEY ix_actions_service_id (service_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Journal mode: how far each FreeRADIUS node's journal is applied, committed
-- in the same transaction as the batch it covers.
CREATE TABLE journal_positions (
  node VARCHAR(64) NOT NULL,
  journal VARCHAR(255) NOT NULL,
  position BIGINT UNSIGNED NOT NULL,
  updated_at DATETIME(6) NOT NULL,
  PRIMARY KEY (node)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
