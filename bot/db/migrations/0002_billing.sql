-- 0002: what the one cost function needs to model Vast's billing on the bot's own clock.
--
-- Vast bills storage (storage_total_cost, $/h) every second an instance exists and the GPU
-- (dph_base, $/h) every second it is running. cost_base holds dollars accrued before billed_from
-- (a rate change folds the cost so far into it); running_s holds closed running stretches since
-- billed_from and running_since the start of the open one, if any. All times are the bot's clock.
ALTER TABLE rentals ADD COLUMN dph_base REAL;
ALTER TABLE rentals ADD COLUMN storage_dph REAL;
ALTER TABLE rentals ADD COLUMN cost_base REAL NOT NULL DEFAULT 0;
ALTER TABLE rentals ADD COLUMN billed_from REAL;
ALTER TABLE rentals ADD COLUMN running_s REAL NOT NULL DEFAULT 0;
ALTER TABLE rentals ADD COLUMN running_since REAL;
