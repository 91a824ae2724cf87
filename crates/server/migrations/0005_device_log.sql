-- The log excerpt a device sends with its heartbeats (bounded by the server).
ALTER TABLE fleet_devices ADD COLUMN log TEXT NOT NULL DEFAULT '';
