//! Table tests of the deciders.
