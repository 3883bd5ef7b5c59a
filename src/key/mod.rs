//! `pitr key`: key files and identities, rotation and retirement of a repo's keys, and the
//! process's key source from the command line. The formats are in [`crate::repo::crypt`].
//!
//! Invariants: secrets are read from files refused when group or others can read them, and
//! never printed but by `generate`; `rotate` writes only key objects, after checking that
//! every data key opens; `retire` never removes a data key's last key object.

pub mod cmd;
