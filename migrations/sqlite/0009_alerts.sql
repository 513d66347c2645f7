-- One row per alert instance: the alert and its group's labels. What the last evaluation
-- decided (pending since when, firing since when) is kept here, so a restart neither forgets
-- a firing alert nor fires it again.
CREATE TABLE alert_states (
    alert_id   TEXT NOT NULL,
    group_key  TEXT NOT NULL,
    phase      TEXT NOT NULL,
    state      TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (alert_id, group_key)
);

-- One row per evaluation tick of an alert: the primary key decides which process evaluates
-- it, as cron_fires does for a cron slot.
CREATE TABLE alert_ticks (
    alert_id TEXT NOT NULL,
    tick     INTEGER NOT NULL,
    PRIMARY KEY (alert_id, tick)
);
