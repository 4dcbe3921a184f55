-- raftq-pg schema, version 1: the outbox, the relay's state and the inbox.
--
-- The names in braces are filled in from the configured prefix (default `raftq`, giving
-- raftq_outbox, raftq_relay, raftq_relay_sequences, raftq_inbox and the notification
-- channel raftq_outbox). `raftq pg-relay migrate --print` prints this file with the names
-- filled in, for teams that run their migrations with their own tool; `migrate` (the
-- command or the library call) applies it once, recorded in {versions}.

-- Messages written by the application's transactions, waiting to be forwarded. The relay
-- deletes a row once raftq has stored its message; a row raftq refused for good (unknown
-- queue, invalid message) stays with `failed_at` and `failure` set.
CREATE TABLE IF NOT EXISTS {outbox} (
    id          bigserial PRIMARY KEY,
    queue       text        NOT NULL,
    -- The order key: rows of one key are forwarded in the order their transactions
    -- committed (the message group, when the message has one).
    order_key   text        NOT NULL DEFAULT '',
    -- The message (raftq.v1.OutgoingMessage, protobuf).
    message     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    failed_at   timestamptz,
    failure     text
);
CREATE INDEX IF NOT EXISTS {outbox}_waiting ON {outbox} (queue, id) WHERE failed_at IS NULL;

-- Wakes the relay (LISTEN {channel}) when a transaction that wrote rows commits.
CREATE OR REPLACE FUNCTION {outbox}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER {outbox}_notify AFTER INSERT ON {outbox}
    FOR EACH STATEMENT EXECUTE FUNCTION {outbox}_notify();

-- The relay's state (one row): the producer it forwards as, and the batch it is
-- forwarding, chosen and numbered before it is sent, so a relay that takes over sends
-- exactly the same batch with the same numbers.
CREATE TABLE IF NOT EXISTS {relay} (
    id              smallint PRIMARY KEY CHECK (id = 1),
    producer_id     bigint   NOT NULL DEFAULT 0,
    batch_queue     text,
    batch_sequence  bigint,
    batch_ids       bigint[],
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {relay} (id) VALUES (1) ON CONFLICT (id) DO NOTHING;

-- Per producer and queue, the number the relay's next send there takes.
CREATE TABLE IF NOT EXISTS {sequences} (
    producer_id bigint NOT NULL,
    queue       text   NOT NULL,
    next        bigint NOT NULL,
    PRIMARY KEY (producer_id, queue)
);

-- Messages an inbox consumer has processed: written in the transaction of the handler's
-- own updates, so a redelivered message is recognised and only acknowledged. A row may be
-- removed once raftq confirmed the message's acknowledgement (`acked_at` set): the
-- message can then never be delivered again.
CREATE TABLE IF NOT EXISTS {inbox} (
    queue        text        NOT NULL,
    message_id   bigint      NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    acked_at     timestamptz,
    PRIMARY KEY (queue, message_id)
);
CREATE INDEX IF NOT EXISTS {inbox}_acked ON {inbox} (acked_at) WHERE acked_at IS NOT NULL;
