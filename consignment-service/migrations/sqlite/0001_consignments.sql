-- Consignments in creation order. seq orders them and pages through them;
-- id is the public, unique identifier. containers is a JSON array of
-- {id, customer_id, origin, user_id}, always read and written with its
-- consignment.
CREATE TABLE consignments (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    description TEXT    NOT NULL,
    weight      INTEGER NOT NULL CHECK (weight > 0),
    vessel_id   TEXT    NOT NULL,
    containers  TEXT    NOT NULL
);
