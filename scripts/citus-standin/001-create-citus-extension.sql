-- as in the official citusdata/citus image
CREATE EXTENSION citus;
