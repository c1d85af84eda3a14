-- What was done at a service visit, as the technician wrote it on the work order ("Replaced the water pump
-- impeller and the thermostat"), so the assistant can answer "what was done on my boat last time". NULL
-- for visits still to come, cancelled ones and older rows.
ALTER TABLE appointments ADD COLUMN IF NOT EXISTS work_done TEXT NULL AFTER status;
