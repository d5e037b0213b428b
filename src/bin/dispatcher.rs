//! `dispatcher` (being written).
fn main() {}
