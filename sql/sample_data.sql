-- Sample data for the Seawind Marine assistant (fictional dealer).
-- Idempotent: every row has a fixed primary key and uses
-- INSERT ... ON DUPLICATE KEY UPDATE, so the file can be re-run safely.
-- Appointment times are relative to the current date so that some are
-- always upcoming (scheduled) and some in the past (completed/cancelled);
-- completed visits say what was done (appointments.work_done, migration 003).
-- Tables are created elsewhere (models, customers, vehicles, appointments).
-- Locations match sql/kb/policies/locations.md.

SET NAMES utf8mb4;

-- ---------------------------------------------------------------- models
INSERT INTO models (id, name, category, model_year) VALUES
  ('seawind-190', 'Seawind 190', 'bowrider',                2024),
  ('seawind-220', 'Seawind 220', 'bowrider',                2024),
  ('seawind-240', 'Seawind 240', 'pontoon',                 2025),
  ('seawind-250', 'Seawind 250', 'center console',          2024),
  ('seawind-280', 'Seawind 280', 'cabin cruiser',           2024),
  ('seawind-310', 'Seawind 310', 'offshore center console', 2025),
  ('seawind-340', 'Seawind 340', 'cabin cruiser',           2025)
ON DUPLICATE KEY UPDATE
  name = VALUES(name), category = VALUES(category), model_year = VALUES(model_year);

-- ------------------------------------------------------------- customers
INSERT INTO customers (id, name, email, phone) VALUES
  ('cust-1001', 'Daniel Okafor',    'daniel.okafor@example.com',    '+1 555-0101'),
  ('cust-1002', 'Maria Santos',     'maria.santos@example.com',     '+1 555-0102'),
  ('cust-1003', 'James Whitfield',  'james.whitfield@example.com',  '+1 555-0103'),
  ('cust-1004', 'Priya Raman',      'priya.raman@example.com',      '+1 555-0104'),
  ('cust-1005', 'Thomas Becker',    'thomas.becker@example.com',    '+1 555-0105'),
  ('cust-1006', 'Aisha Khan',       'aisha.khan@example.com',       '+1 555-0106'),
  ('cust-1007', 'Robert Delgado',   'robert.delgado@example.com',   '+1 555-0107'),
  ('cust-1008', 'Sofia Lindqvist',  'sofia.lindqvist@example.com',  '+1 555-0108'),
  ('cust-1009', 'Kenji Watanabe',   'kenji.watanabe@example.com',   '+1 555-0109'),
  ('cust-1010', 'Olivia Martin',    'olivia.martin@example.com',    '+1 555-0110'),
  ('cust-1011', 'Liam O''Connor',   'liam.oconnor@example.com',     '+1 555-0111'),
  ('cust-1012', 'Grace Mwangi',     'grace.mwangi@example.com',     '+1 555-0112'),
  ('cust-1013', 'Hannah Berg',      'hannah.berg@example.com',      '+1 555-0113')
ON DUPLICATE KEY UPDATE
  name = VALUES(name), email = VALUES(email), phone = VALUES(phone);

-- -------------------------------------------------------------- vehicles
-- Most customers own one boat; cust-1005, cust-1007 and cust-1012 own two,
-- cust-1013 owns three (one of them, a new Seawind 190, without a name).
-- cust-1001 owns exactly one boat: a Seawind 250 due for its 300-hour service.
INSERT INTO vehicles (id, customer_id, model_id, hull_id, nickname, purchase_date, engine_hours) VALUES
  ('veh-2001', 'cust-1001', 'seawind-250', 'SWM25031C424', 'Blue Heron',      '2024-03-14', 286),
  ('veh-2002', 'cust-1002', 'seawind-190', 'SWM19044E424', 'Sunny Days',      '2024-05-02',  64),
  ('veh-2003', 'cust-1003', 'seawind-280', 'SWM28012F323', 'Weekend Escape',  '2023-06-20', 412),
  ('veh-2004', 'cust-1004', 'seawind-240', 'SWM24007D525', 'Lazy Lagoon',     '2025-04-18',  18),
  ('veh-2005', 'cust-1005', 'seawind-340', 'SWM34003B525', 'Nordic Light',    '2025-02-10', 143),
  ('veh-2006', 'cust-1005', 'seawind-190', 'SWM19018G121', 'Little Tern',     '2021-07-01', 530),
  ('veh-2007', 'cust-1006', 'seawind-220', 'SWM22025F424', 'Wake Maker',      '2024-06-12', 198),
  ('veh-2008', 'cust-1007', 'seawind-310', 'SWM31009C525', 'Reel Deal',       '2025-03-22',  96),
  ('veh-2009', 'cust-1007', 'seawind-240', 'SWM24015E222', 'Family Float',    '2022-05-30', 610),
  ('veh-2010', 'cust-1008', 'seawind-250', 'SWM25011D323', 'Sea Sparrow',     '2023-04-11', 455),
  ('veh-2011', 'cust-1009', 'seawind-280', 'SWM28027G424', 'Tranquility',     '2024-07-08', 120),
  ('veh-2012', 'cust-1010', 'seawind-220', 'SWM22014H323', 'Splash',          '2023-08-19', 305),
  ('veh-2013', 'cust-1011', 'seawind-190', 'SWM19052I424', 'Minnow',          '2024-09-01',  41),
  ('veh-2014', 'cust-1012', 'seawind-310', 'SWM31002J425', 'Offshore Spirit', '2024-10-15', 210),
  ('veh-2015', 'cust-1012', 'seawind-240', 'SWM24021F424', 'Sundowner',       '2024-06-05', 174),
  ('veh-2016', 'cust-1013', 'seawind-280', 'SWM28019K222', 'Midnight Sun',    '2022-05-12', 388),
  ('veh-2017', 'cust-1013', 'seawind-220', 'SWM22031K323', 'Wave Dancer',     '2023-06-01', 251),
  ('veh-2018', 'cust-1013', 'seawind-190', 'SWM19067K525', NULL,              '2025-05-20',  12)
ON DUPLICATE KEY UPDATE
  customer_id = VALUES(customer_id), model_id = VALUES(model_id), hull_id = VALUES(hull_id),
  nickname = VALUES(nickname), purchase_date = VALUES(purchase_date), engine_hours = VALUES(engine_hours);

-- ---------------------------------------------------------- appointments
-- Explicit ids keep re-runs idempotent; re-running also resets the dates
-- and statuses relative to today. work_done is what the work order says
-- was done (NULL for visits to come and cancelled ones).
INSERT INTO appointments (id, customer_id, vehicle_id, scheduled_at, service, location, status, work_done) VALUES
  -- cust-1001: two past services and exactly one upcoming appointment
  (5001, 'cust-1001', 'veh-2001', DATE(NOW()) - INTERVAL 240 DAY + INTERVAL  9 HOUR, '100-hour service',                        'Seawind Marine Port Alden',   'completed',
         'Changed the engine oil and filter and the lower unit gear oil, replaced the fuel/water separator filter, greased the tilt tube and load-tested both batteries.'),
  (5002, 'cust-1001', 'veh-2001', DATE(NOW()) - INTERVAL  35 DAY + INTERVAL 14 HOUR, 'Diagnostic: E71 trim position sensor fault', 'Seawind Marine Port Alden',   'completed',
         'Replaced the corroded trim position sensor connector at the transom bracket and recalibrated the trim gauge.'),
  (5003, 'cust-1001', 'veh-2001', DATE(NOW()) + INTERVAL   9 DAY + INTERVAL 10 HOUR, '300-hour service',                        'Seawind Marine Port Alden',   'scheduled', NULL),
  -- other customers
  (5004, 'cust-1002', 'veh-2002', DATE(NOW()) - INTERVAL  45 DAY + INTERVAL  9 HOUR, '20-hour break-in service',                'Seawind Marine Crystal Lake', 'completed',
         'Changed the engine oil, oil filter and gear oil, checked the propeller nut torque and the steering cable; no stored fault codes.'),
  (5005, 'cust-1002', 'veh-2002', DATE(NOW()) + INTERVAL  21 DAY + INTERVAL 11 HOUR, 'Annual service',                          'Seawind Marine Crystal Lake', 'scheduled', NULL),
  (5006, 'cust-1003', 'veh-2003', DATE(NOW()) + INTERVAL   5 DAY + INTERVAL  8 HOUR, '100-hour service and bellows replacement', 'Seawind Marine Harbor Point', 'scheduled', NULL),
  (5007, 'cust-1003', 'veh-2003', DATE(NOW()) - INTERVAL 120 DAY + INTERVAL 13 HOUR, 'Warranty repair: E63 charging system fault', 'Seawind Marine Harbor Point', 'completed',
         'Replaced the alternator and its voltage regulator under warranty and cleaned the battery terminals.'),
  (5008, 'cust-1004', 'veh-2004', DATE(NOW()) + INTERVAL   3 DAY + INTERVAL  9 HOUR, '20-hour break-in service',                'Seawind Marine Crystal Lake', 'scheduled', NULL),
  (5009, 'cust-1005', 'veh-2005', DATE(NOW()) + INTERVAL  14 DAY + INTERVAL  8 HOUR, 'Annual service with haul-out',            'Seawind Marine Harbor Point', 'scheduled', NULL),
  (5010, 'cust-1005', 'veh-2006', DATE(NOW()) - INTERVAL  60 DAY + INTERVAL 10 HOUR, 'Water pump impeller replacement',         'Seawind Marine Port Alden',   'completed',
         'Replaced the water pump impeller and the thermostat and flushed salt deposits from the cooling passages.'),
  (5011, 'cust-1006', 'veh-2007', DATE(NOW()) - INTERVAL  30 DAY + INTERVAL  9 HOUR, '100-hour service',                        'Seawind Marine Port Alden',   'completed',
         'Changed the engine oil and filter and the outdrive gear lube, replaced the fuel/water separator filter and greased the gimbal bearing.'),
  (5012, 'cust-1006', 'veh-2007', DATE(NOW()) + INTERVAL   2 DAY + INTERVAL 15 HOUR, 'Bellows inspection',                      'Seawind Marine Port Alden',   'cancelled', NULL),
  (5013, 'cust-1007', 'veh-2008', DATE(NOW()) + INTERVAL   7 DAY + INTERVAL  8 HOUR, '100-hour service',                        'Seawind Marine Harbor Point', 'scheduled', NULL),
  (5014, 'cust-1007', 'veh-2009', DATE(NOW()) - INTERVAL  90 DAY + INTERVAL 11 HOUR, '300-hour service',                        'Seawind Marine Crystal Lake', 'completed',
         'Replaced the three spark plugs, the water pump impeller and the thermostat, changed the oil and gear oil, and cleaned the aluminum tubes.'),
  (5015, 'cust-1008', 'veh-2010', DATE(NOW()) - INTERVAL  15 DAY + INTERVAL 10 HOUR, 'Diagnostic: E42 water in fuel',           'Seawind Marine Port Alden',   'completed',
         'Drained the separator bowl, replaced the fuel/water separator filter and the O-ring of the fuel fill cap.'),
  (5016, 'cust-1008', 'veh-2010', DATE(NOW()) + INTERVAL  30 DAY + INTERVAL  9 HOUR, '100-hour service',                        'Seawind Marine Port Alden',   'scheduled', NULL),
  (5017, 'cust-1009', 'veh-2011', DATE(NOW()) + INTERVAL  10 DAY + INTERVAL 13 HOUR, '100-hour service',                        'Seawind Marine Harbor Point', 'scheduled', NULL),
  (5018, 'cust-1009', 'veh-2011', DATE(NOW()) - INTERVAL   5 DAY + INTERVAL 10 HOUR, 'Shore power inspection',                  'Seawind Marine Harbor Point', 'cancelled', NULL),
  (5019, 'cust-1010', 'veh-2012', DATE(NOW()) - INTERVAL  10 DAY + INTERVAL  9 HOUR, '300-hour service',                        'Seawind Marine Port Alden',   'completed',
         'Replaced the six spark plugs, the seawater pickup pump impeller, the thermostat and the drive belt, and changed the oil and outdrive gear lube.'),
  (5020, 'cust-1011', 'veh-2013', DATE(NOW()) - INTERVAL  20 DAY + INTERVAL 14 HOUR, '20-hour break-in service',                'Seawind Marine Crystal Lake', 'completed',
         'Changed the engine oil, oil filter and gear oil and checked the engine mounting bolts.'),
  (5021, 'cust-1012', 'veh-2014', DATE(NOW()) + INTERVAL  18 DAY + INTERVAL 10 HOUR, 'Autopilot calibration: E92 heading sensor fault', 'Seawind Marine Harbor Point', 'scheduled', NULL),
  (5022, 'cust-1012', 'veh-2015', DATE(NOW()) - INTERVAL  75 DAY + INTERVAL 11 HOUR, 'Trim motor repair: E74 trim pump overcurrent', 'Seawind Marine Crystal Lake', 'completed',
         'Replaced the trim pump motor and the trim relay, and checked the trim wiring for chafing.'),
  -- customers with several boats: a visit for each boat, so "what was done on <boat>" has an answer
  (5023, 'cust-1005', 'veh-2005', DATE(NOW()) - INTERVAL 100 DAY + INTERVAL  8 HOUR, '100-hour service',                        'Seawind Marine Harbor Point', 'completed',
         'Changed the oil and filters on both diesels and the generator, replaced the primary fuel filters and water separators, and checked the shaft seals.'),
  (5024, 'cust-1007', 'veh-2009', DATE(NOW()) + INTERVAL  40 DAY + INTERVAL  9 HOUR, 'Winterization',                           'Seawind Marine Crystal Lake', 'scheduled', NULL),
  (5025, 'cust-1012', 'veh-2014', DATE(NOW()) - INTERVAL 130 DAY + INTERVAL  9 HOUR, '100-hour service',                        'Seawind Marine Harbor Point', 'completed',
         'Changed the oil and filters on both outboards, replaced both fuel/water separator filters and synchronized the engines.'),
  (5026, 'cust-1013', 'veh-2016', DATE(NOW()) - INTERVAL  50 DAY + INTERVAL  9 HOUR, '300-hour service',                        'Seawind Marine Harbor Point', 'completed',
         'Replaced the eight spark plugs, the seawater pump impeller, the thermostat and the serpentine belt, and changed the oil and outdrive gear lube.'),
  (5027, 'cust-1013', 'veh-2017', DATE(NOW()) - INTERVAL  20 DAY + INTERVAL 10 HOUR, 'Bellows inspection',                      'Seawind Marine Port Alden',   'cancelled', NULL),
  (5028, 'cust-1013', 'veh-2018', DATE(NOW()) + INTERVAL  12 DAY + INTERVAL  9 HOUR, '20-hour break-in service',                'Seawind Marine Crystal Lake', 'scheduled', NULL),
  (5029, 'cust-1013', 'veh-2017', DATE(NOW()) - INTERVAL 200 DAY + INTERVAL 14 HOUR, '100-hour service',                        'Seawind Marine Port Alden',   'completed',
         'Changed the oil and filter and the outdrive gear lube, replaced the fuel/water separator filter and inspected the outdrive bellows.')
ON DUPLICATE KEY UPDATE
  customer_id = VALUES(customer_id), vehicle_id = VALUES(vehicle_id), scheduled_at = VALUES(scheduled_at),
  service = VALUES(service), location = VALUES(location), status = VALUES(status), work_done = VALUES(work_done);
