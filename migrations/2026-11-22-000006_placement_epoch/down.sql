DROP TRIGGER leases_deleted_placement_epoch ON leases;
DROP TRIGGER leases_ended_placement_epoch ON leases;
DROP TRIGGER donations_placement_epoch ON donations;
DROP TRIGGER machines_insert_placement_epoch ON machines;
DROP TRIGGER machines_placement_epoch ON machines;
DROP FUNCTION bump_placement_epoch();
DROP TABLE placement_epoch;
