//! The mapping engine: Messaging Server mapping tables as the dispatcher's PORT_ACCESS check
//! (and `dispatcher --test-mapping`) use them.
//!
//! * [`pattern`]: compiling and matching the pattern column (wildcards, globs, IP matches).
//! * [`template`]: compiling and expanding the template column (substitutions, flags,
//!   processing control).
//! * [`index`]: per table, which entries can match a string (literal runs and IP prefixes
//!   every match must contain), so a big PORT_ACCESS table is not tried entry by entry.
//! * [`table`]: a whole file compiled, and the documented top-to-bottom algorithm with
//!   `$C $E $L $R`, failures and the iteration limit.
//! * [`port_access`]: the dispatcher's decision for a connection, a pure function of the table
//!   and the probe string.
//!
//! Nothing here reads files or touches sockets; `config::mappings` parses the file.
pub mod index;
pub mod pattern;
pub mod port_access;
pub mod table;
pub mod template;
