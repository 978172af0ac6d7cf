//! Unit tests of the campaign domain.
